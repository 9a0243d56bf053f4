//! A throwaway certificate authority for one cluster, and the certificates and kubeconfigs
//! issued from it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::Error;

/// A certificate and its private key, both PEM.
#[derive(Debug)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// The cluster's CA. Its parameters are rebuilt from the cluster name, so the CA can be
/// loaded again from its key alone (to issue node credentials after `up`).
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl CertificateAuthority {
    /// A new CA with a fresh key.
    pub fn generate(cluster: &str) -> Result<Self, Error> {
        let key = KeyPair::generate()?;
        let params = ca_params(cluster);
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(CertificateAuthority {
            issuer: Issuer::new(params, key),
            cert_pem,
        })
    }

    /// The CA written by [`CertificateAuthority::write`] into `dir`.
    pub fn load(cluster: &str, dir: &Path) -> Result<Self, Error> {
        let key = KeyPair::from_pem(&read(&dir.join("ca.key"))?)?;
        let cert_pem = read(&dir.join("ca.crt"))?;
        // Same subject and key, hence the same key identifier: what it signs chains to ca.crt.
        Ok(CertificateAuthority {
            issuer: Issuer::new(ca_params(cluster), key),
            cert_pem,
        })
    }

    /// Writes `ca.crt` and `ca.key` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), Error> {
        write(&dir.join("ca.crt"), &self.cert_pem)?;
        write(&dir.join("ca.key"), &self.issuer.key().serialize_pem())
    }

    /// A serving certificate for the given names and addresses.
    pub fn issue_server(&self, dns_names: &[&str], ips: &[IpAddr]) -> Result<Issued, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(dns_names.first().copied().unwrap_or("server"));
        params.subject_alt_names = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
        for name in dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName((*name).try_into()?));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate: the API server reads the user from the common name and the
    /// groups from the organisations.
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> Result<Issued, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(user);
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, mut params: CertificateParams) -> Result<Issued, Error> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes a certificate as `<stem>.crt` and `<stem>.key` into `dir`; returns both paths.
pub fn write_issued(dir: &Path, stem: &str, issued: &Issued) -> Result<(PathBuf, PathBuf), Error> {
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    write(&cert, &issued.cert_pem)?;
    write(&key, &issued.key_pem)?;
    Ok((cert, key))
}

/// Writes the service-account signing key pair as `sa.key` and `sa.pub` into `dir`.
pub fn write_service_account_keys(dir: &Path) -> Result<(), Error> {
    let key = KeyPair::generate()?;
    write(&dir.join("sa.key"), &key.serialize_pem())?;
    write(&dir.join("sa.pub"), &key.public_key_pem())
}

/// A kubeconfig with one cluster, one user (a client certificate) and one context.
/// Paths are absolute, so the file works from any directory and inside node namespaces.
pub fn kubeconfig(server: &str, ca: &Path, cert: &Path, key: &Path, user: &str) -> String {
    // JSON strings are valid YAML scalars, which takes care of quoting paths.
    let quote = |value: &str| serde_json::Value::from(value).to_string();
    let path = |value: &Path| quote(&value.to_string_lossy());
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: tortie\n  \
           cluster:\n    \
             server: {server}\n    \
             certificate-authority: {ca}\n\
         users:\n\
         - name: {user}\n  \
           user:\n    \
             client-certificate: {cert}\n    \
             client-key: {key}\n\
         contexts:\n\
         - name: tortie\n  \
           context:\n    \
             cluster: tortie\n    \
             user: {user}\n\
         current-context: tortie\n",
        server = quote(server),
        ca = path(ca),
        cert = path(cert),
        key = path(key),
        user = quote(user),
    )
}

fn ca_params(cluster: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(&format!("tortie {cluster} CA"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::io(path, source))
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|source| Error::io(path, source))
}
