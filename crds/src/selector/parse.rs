//! A recursive-descent parser for selectors, working on bytes: every token is ASCII, so
//! every position it reports or slices at is a character boundary.

use super::expr::{CompareOp, Expr};
use super::{MAX_NESTING, ParseError};

/// What may start a term, for messages.
const TERM_START: &str = "a label key, '!', '(', 'has(key)', 'all()' or 'global()'";

/// The operators that may follow a label key, for messages.
const OPERATORS: &str = "'==', '!=', 'in', 'not in', 'contains', 'starts with' or 'ends with'";

type Result<T> = std::result::Result<T, ParseError>;

/// Parses a whole selector; an empty or blank one is `all()`.
pub(super) fn parse(input: &str) -> Result<Expr> {
    let mut parser = Parser {
        input,
        bytes: input.as_bytes(),
        pos: 0,
        depth: 0,
    };

    parser.skip_whitespace();
    if parser.at_end() {
        return Ok(Expr::All);
    }

    let expr = parser.parse_or()?;
    parser.skip_whitespace();
    if !parser.at_end() {
        return Err(parser.error(format!(
            "expected '&&', '||' or end of selector, found {}",
            parser.found()
        )));
    }
    Ok(expr)
}

struct Parser<'a> {
    input: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// How many `(` and `!` enclose the current position.
    depth: usize,
}

impl<'a> Parser<'a> {
    fn parse_or(&mut self) -> Result<Expr> {
        let mut terms = vec![self.parse_and()?];
        loop {
            self.skip_whitespace();
            if !self.eat("||") {
                return Ok(Expr::or(terms));
            }
            terms.push(self.parse_and()?);
        }
    }

    fn parse_and(&mut self) -> Result<Expr> {
        let mut terms = vec![self.parse_unary()?];
        loop {
            self.skip_whitespace();
            if !self.eat("&&") {
                return Ok(Expr::and(terms));
            }
            terms.push(self.parse_unary()?);
        }
    }

    fn parse_unary(&mut self) -> Result<Expr> {
        self.skip_whitespace();
        match self.peek() {
            Some(b'!') => {
                self.enter()?;
                self.pos += 1;
                let inner = self.parse_unary()?;
                self.depth -= 1;
                Ok(Expr::Not(Box::new(inner)))
            }
            Some(b'(') => {
                let open = self.pos;
                self.enter()?;
                self.pos += 1;
                let inner = self.parse_or()?;
                self.skip_whitespace();
                if !self.eat(")") {
                    return Err(self.error(format!(
                        "expected '&&', '||' or ')' to close the '(' at position {open}, \
                         found {}",
                        self.found()
                    )));
                }
                self.depth -= 1;
                Ok(inner)
            }
            Some(b) if is_key_byte(b) => self.parse_term(),
            Some(b'\'' | b'"') => Err(self.error(format!(
                "expected {TERM_START}, found a quoted string; label keys are written \
                 without quotes"
            ))),
            _ => Err(self.error(format!("expected {TERM_START}, found {}", self.found()))),
        }
    }

    /// A term that starts with a word: a function call or a comparison on a label key.
    fn parse_term(&mut self) -> Result<Expr> {
        let word_start = self.pos;
        let word = self.take_key();
        self.skip_whitespace();

        if self.peek() == Some(b'(') {
            self.pos += 1;
            return match word {
                "has" => self.parse_has(),
                "all" => self.parse_no_arguments("all").map(|()| Expr::All),
                "global" => self.parse_no_arguments("global").map(|()| Expr::Global),
                _ => Err(ParseError {
                    input: self.input.to_owned(),
                    position: word_start,
                    message: format!(
                        "unknown function '{word}('; the functions are has(key), all() and \
                         global()"
                    ),
                }),
            };
        }

        let key = word.to_owned();
        if self.eat("==") {
            return self.parse_compare(key, CompareOp::Equal);
        }
        if self.eat("!=") {
            return self.parse_compare(key, CompareOp::NotEqual);
        }
        if self.eat_word("in") {
            return self.parse_in(key, false, "in");
        }
        if self.eat("not") {
            self.skip_whitespace();
            if !self.eat_word("in") {
                return Err(
                    self.error(format!("expected 'in' after 'not', found {}", self.found()))
                );
            }
            return self.parse_in(key, true, "not in");
        }
        if self.eat_word("contains") {
            return self.parse_compare(key, CompareOp::Contains);
        }
        if self.eat("starts") {
            self.skip_whitespace();
            if !self.eat_word("with") {
                return Err(self.error(format!(
                    "expected 'with' after 'starts', found {}",
                    self.found()
                )));
            }
            return self.parse_compare(key, CompareOp::StartsWith);
        }
        if self.eat("ends") {
            self.skip_whitespace();
            if !self.eat_word("with") {
                return Err(self.error(format!(
                    "expected 'with' after 'ends', found {}",
                    self.found()
                )));
            }
            return self.parse_compare(key, CompareOp::EndsWith);
        }

        let hint = match self.peek() {
            Some(b'=') => "; equality is written '=='",
            Some(b'\'' | b'"') => "; put an operator between the key and the value",
            _ => "",
        };
        Err(self.error(format!(
            "expected an operator after label key '{key}': {OPERATORS}, found {}{hint}",
            self.found()
        )))
    }

    /// The rest of `has(key)`, after the `(`.
    fn parse_has(&mut self) -> Result<Expr> {
        self.skip_whitespace();
        if !self.peek().is_some_and(is_key_byte) {
            return Err(self.error(format!(
                "expected a label key after 'has(', found {}",
                self.found()
            )));
        }
        let key = self.take_key().to_owned();
        self.skip_whitespace();
        if !self.eat(")") {
            return Err(self.error(format!(
                "expected ')' after the label key in 'has({key}', found {}",
                self.found()
            )));
        }
        Ok(Expr::Has(key))
    }

    /// The `)` of `all()` or `global()`.
    fn parse_no_arguments(&mut self, name: &str) -> Result<()> {
        self.skip_whitespace();
        if self.eat(")") {
            Ok(())
        } else {
            Err(self.error(format!(
                "expected ')' after '{name}(': {name}() takes no arguments, found {}",
                self.found()
            )))
        }
    }

    fn parse_compare(&mut self, key: String, op: CompareOp) -> Result<Expr> {
        let value = self.parse_string(&format!("'{op}'"))?.to_owned();
        Ok(Expr::Compare { key, op, value })
    }

    /// The `{ "a", "b" }` after `in` or `not in`.
    fn parse_in(&mut self, key: String, negated: bool, op: &str) -> Result<Expr> {
        self.skip_whitespace();
        if !self.eat("{") {
            return Err(self.error(format!(
                "expected '{{' to start the set of values after '{op}', found {}",
                self.found()
            )));
        }

        let mut values = Vec::new();
        self.skip_whitespace();
        if !self.eat("}") {
            loop {
                values.push(self.parse_string("'{' or ','")?.to_owned());
                self.skip_whitespace();
                if self.eat("}") {
                    break;
                }
                if !self.eat(",") {
                    return Err(self.error(format!(
                        "expected ',' or '}}' in the set of values, found {}",
                        self.found()
                    )));
                }
            }
        }

        values.sort_unstable();
        values.dedup();
        Ok(Expr::In {
            key,
            values,
            negated,
        })
    }

    /// A quoted string, returned without its quotes. `after` names what came before it,
    /// for the message when the string is missing.
    fn parse_string(&mut self, after: &str) -> Result<&'a str> {
        self.skip_whitespace();
        let open = self.pos;
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => {
                return Err(self.error(format!(
                    "expected a quoted string after {after}, found {}; values are written \
                     in single or double quotes",
                    self.found()
                )));
            }
        };

        let content_start = open + 1;
        let Some(length) = self.bytes[content_start..].iter().position(|&b| b == quote) else {
            return Err(ParseError {
                input: self.input.to_owned(),
                position: open,
                message: format!(
                    "unterminated string: the {} opened here is never closed",
                    if quote == b'"' { "'\"'" } else { "\"'\"" }
                ),
            });
        };
        self.pos = content_start + length + 1;
        Ok(&self.input[content_start..content_start + length])
    }

    /// Steps one level deeper into `(` or `!`, refusing to go past the bound.
    fn enter(&mut self) -> Result<()> {
        if self.depth >= MAX_NESTING {
            return Err(self.error(format!(
                "selector nests '(' and '!' more than {MAX_NESTING} levels deep; simplify it"
            )));
        }
        self.depth += 1;
        Ok(())
    }

    fn take_key(&mut self) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(is_key_byte) {
            self.pos += 1;
        }
        &self.input[start..self.pos]
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.bytes[self.pos..].starts_with(token.as_bytes()) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    /// Like [`Parser::eat`], but only when the word is not the start of a longer word,
    /// so that `a inside` is not read as `a in side`.
    fn eat_word(&mut self, word: &str) -> bool {
        let rest = &self.bytes[self.pos..];
        let whole_word = rest.starts_with(word.as_bytes())
            && !rest.get(word.len()).copied().is_some_and(is_key_byte);
        if whole_word {
            self.pos += word.len();
        }
        whole_word
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    /// Describes what is at the current position, for messages.
    fn found(&self) -> String {
        match self
            .input
            .get(self.pos..)
            .and_then(|rest| rest.chars().next())
        {
            None => "end of selector".to_owned(),
            Some(c) => format!("{c:?}"),
        }
    }

    fn error(&self, message: String) -> ParseError {
        ParseError {
            input: self.input.to_owned(),
            position: self.pos,
            message,
        }
    }
}

/// The bytes a label key is made of: Kubernetes' name characters plus `/` for the
/// prefix. Keys are not checked further, as a selector may name any label.
fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-')
}
