//! Password hashes: argon2id for everything the gateway hashes itself, and verification of the
//! bcrypt and sha512-crypt hashes the registry may hold. All of it is CPU-heavy: callers run it
//! on the blocking pool ([`crate::CredentialChain`] does).

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use serde::{Deserialize, Serialize};
use sha_crypt::ShaCrypt;

use crate::AuthError;

/// Checked argon2id parameters (`[auth] argon2_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashParams {
    params: Params,
}

impl HashParams {
    pub fn new(memory_kib: u32, iterations: u32, parallelism: u32) -> Result<Self, AuthError> {
        let params = Params::new(memory_kib, iterations, parallelism, None).map_err(|e| {
            AuthError::Params(format!("m={memory_kib} t={iterations} p={parallelism}: {e}"))
        })?;
        Ok(Self { params })
    }

    /// Hashes `password` with a fresh random salt into a PHC string (`$argon2id$v=19$...`).
    pub fn hash(&self, password: &str) -> Result<StoredHash, AuthError> {
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone());
        let phc =
            argon.hash_password(password.as_bytes()).map_err(|e| AuthError::Hash(e.to_string()))?;
        Ok(StoredHash::Argon2(phc.to_string()))
    }
}

impl Default for HashParams {
    /// The `[auth]` defaults: m = 4096 KiB, t = 1, p = 1.
    fn default() -> Self {
        Self { params: Params::new(4096, 1, 1, None).unwrap_or_default() }
    }
}

/// A password as the gateway keeps it: never plain.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredHash {
    /// A PHC string made by the gateway (its parameters are in the string).
    Argon2(String),
    /// A bcrypt hash from the registry (`$2a$`, `$2b$`, `$2y$`).
    Bcrypt(String),
    /// A sha512-crypt hash from the registry (`$6$`).
    Sha512(String),
}

impl std::fmt::Debug for StoredHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Self::Argon2(_) => "argon2id",
            Self::Bcrypt(_) => "bcrypt",
            Self::Sha512(_) => "sha512-crypt",
        };
        write!(f, "StoredHash({kind})")
    }
}

impl StoredHash {
    /// Whether `presented` is the password. Slow by design; a malformed hash never matches.
    pub fn verify(&self, presented: &str) -> bool {
        match self {
            Self::Argon2(phc) => {
                Argon2::default().verify_password(presented.as_bytes(), phc.as_str()).is_ok()
            }
            Self::Bcrypt(hash) => bcrypt::verify(presented, hash).unwrap_or(false),
            Self::Sha512(hash) => {
                hash.starts_with("$6$")
                    && ShaCrypt::SHA512.verify_password(presented.as_bytes(), hash.as_str()).is_ok()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sha512-crypt of "Hello world!" with salt "saltstring" (the reference test vector).
    pub(crate) const SHA512_HELLO: &str = "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1";

    #[test]
    fn argon2id_hash_verifies_only_its_password() {
        let h = HashParams::new(64, 1, 1).unwrap().hash("pw").unwrap();
        let StoredHash::Argon2(phc) = &h else { panic!("argon2 expected") };
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(h.verify("pw"));
        assert!(!h.verify("pw2"));
    }

    #[test]
    fn bcrypt_and_sha512_crypt_verify() {
        let b = StoredHash::Bcrypt(bcrypt::hash("pw", 4).unwrap());
        assert!(b.verify("pw") && !b.verify("nope"));
        let s = StoredHash::Sha512(SHA512_HELLO.into());
        assert!(s.verify("Hello world!") && !s.verify("Hello world"));
        assert!(!StoredHash::Sha512("$5$x$y".into()).verify("Hello world!"));
        assert!(!StoredHash::Argon2("garbage".into()).verify(""));
    }

    #[test]
    fn debug_shows_no_hash() {
        let h = StoredHash::Bcrypt("$2b$04$secretish".into());
        assert_eq!(format!("{h:?}"), "StoredHash(bcrypt)");
    }

    #[test]
    fn out_of_range_params_are_an_error() {
        assert!(HashParams::new(1, 1, 1).is_err());
        assert!(HashParams::new(4096, 0, 1).is_err());
    }
}
