//! Content digests (`sha256:<hex>`, `sha512:<hex>`) and incremental checks.

use crate::error::{Error, Result};
use sha2::{Digest as _, Sha256, Sha512};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub algorithm: Algorithm,
    pub hex: String,
}

impl Digest {
    pub fn parse(s: &str) -> Result<Digest> {
        let bad = || Error::BadDigest(s.chars().take(200).collect());
        let (alg, hex) = s.split_once(':').ok_or_else(bad)?;
        let (algorithm, len) = match alg {
            "sha256" => (Algorithm::Sha256, 64),
            "sha512" => (Algorithm::Sha512, 128),
            _ => return Err(bad()),
        };
        if hex.len() != len
            || !hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        {
            return Err(bad());
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }

    pub fn sha256_of(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }
}

/// Hashes bytes as they stream by; `finish` checks against the expected digest.
pub struct Verifier {
    expected: String,
    state: State,
}

enum State {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Verifier {
    pub fn new(expected: &str) -> Result<Verifier> {
        let d = Digest::parse(expected)?;
        let state = match d.algorithm {
            Algorithm::Sha256 => State::Sha256(Sha256::new()),
            Algorithm::Sha512 => State::Sha512(Sha512::new()),
        };
        Ok(Verifier {
            expected: expected.to_string(),
            state,
        })
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            State::Sha256(h) => h.update(data),
            State::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Result<()> {
        let actual = match self.state {
            State::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            State::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        };
        if actual == self.expected {
            Ok(())
        } else {
            Err(Error::DigestMismatch {
                expected: self.expected,
                actual,
            })
        }
    }
}

/// Verify a whole buffer against `expected`.
pub fn verify(expected: &str, data: &[u8]) -> Result<()> {
    let mut v = Verifier::new(expected)?;
    v.update(data);
    v.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_and_rejects() {
        let d = Digest::sha256_of(b"hello");
        verify(&d, b"hello").unwrap();
        let e = verify(&d, b"hellO").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::DigestMismatch);
        assert!(Digest::parse("sha256:ABC").is_err());
        assert!(Digest::parse("md5:00").is_err());
        assert!(Digest::parse(&d.replace('a', "A")).is_err() || !d.contains('a'));
    }
}
