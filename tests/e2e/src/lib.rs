//! The local cluster and the support library for end-to-end tests.
