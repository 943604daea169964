//! A private CA and a server certificate for 127.0.0.1, for TLS registries
//! in tests (the certificate verification paths need a real handshake).

use std::path::{Path, PathBuf};

pub struct TestCa {
    /// The CA certificate (PEM): what a client must trust.
    pub ca: PathBuf,
    /// Server certificate and key (PEM) for 127.0.0.1, signed by the CA.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// Writes ca.pem, cert.pem and key.pem into `dir`.
    pub fn create(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "e2e test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let out = TestCa {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&out.ca, ca_cert.pem()).unwrap();
        std::fs::write(&out.cert, cert.pem()).unwrap();
        std::fs::write(&out.key, key.serialize_pem()).unwrap();
        out
    }

    /// A CA nobody signed the server certificate with.
    pub fn unrelated_ca(dir: &Path) -> PathBuf {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let path = dir.join("other-ca.pem");
        std::fs::write(&path, p.self_signed(&key).unwrap().pem()).unwrap();
        path
    }
}
