//! Password hashes: argon2id for everything the gateway hashes itself, and verification of the
//! bcrypt and sha512-crypt hashes the registry may hold. All of it is CPU-heavy: callers run it
//! on the blocking pool ([`crate::CredentialChain`] does).
//!
//! argon2's working memory (`m` KiB per hash) is taken from a small pool and returned after
//! each hash instead of being allocated and freed every time: with glibc, freeing one such
//! buffer raises the allocator's mmap threshold, later buffers come from the heap and the
//! freed ones stay resident: a storm of 1,000 logins would grow the process by hundreds of
//! MiB. The pool keeps at most one buffer per core, plus one for a registry sync.

use std::sync::{LazyLock, Mutex, PoisonError};

use argon2::{
    ARGON2ID_IDENT, Algorithm, Argon2, Block, Params, PasswordVerifier, Version,
    password_hash::phc::{Output, ParamsString, PasswordHash, Salt},
};
use serde::{Deserialize, Serialize};
use sha_crypt::ShaCrypt;

use crate::AuthError;

/// Idle argon2 working buffers, reused by the next hash.
static MEMORY: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());

/// How many idle buffers the pool keeps: logins hash at most one per core, and a registry sync
/// hashes new devices on one more thread. Read once: finding the core count can read cgroup
/// files, and every login would ask.
static POOL_SIZE: LazyLock<usize> =
    LazyLock::new(|| std::thread::available_parallelism().map_or(1, usize::from) + 1);

/// Runs `f` with argon2 working memory of `params`' size, from the pool when one is idle.
fn with_memory<T>(params: &Params, f: impl FnOnce(&mut [Block]) -> T) -> T {
    let blocks = params.block_count();
    let pooled = MEMORY.lock().unwrap_or_else(PoisonError::into_inner).pop();
    let mut memory = pooled.unwrap_or_default();
    if memory.len() < blocks {
        memory = vec![Block::default(); blocks];
    }
    let result = f(&mut memory[..blocks]);
    let mut pool = MEMORY.lock().unwrap_or_else(PoisonError::into_inner);
    if pool.len() < *POOL_SIZE {
        pool.push(memory);
    }
    result
}

/// argon2id of `password` with `salt` into `out`.
fn argon2_into(
    algorithm: Algorithm,
    version: Version,
    params: Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    let argon = Argon2::new(algorithm, version, params.clone());
    with_memory(&params, |memory| argon.hash_password_into_with_memory(password, salt, out, memory))
}

/// Whether `presented` hashes to the PHC string `phc` (argon2 with the string's parameters).
fn verify_phc(phc: &str, presented: &[u8]) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else { return false };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else { return false };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm.as_str()) else { return false };
    let version = match hash.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&hash) else { return false };
    let mut buffer = [0u8; Output::MAX_LENGTH];
    let Some(out) = buffer.get_mut(..expected.len()) else { return false };
    if argon2_into(algorithm, version, params, presented, salt, out).is_err() {
        return false;
    }
    // `Output`'s equality is constant-time
    Output::new(out).is_ok_and(|computed| computed == *expected)
}

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
        let failed = |e: &dyn std::fmt::Display| AuthError::Hash(e.to_string());
        let salt = Salt::generate();
        let mut buffer = [0u8; Output::MAX_LENGTH];
        let len = self.params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
        let out = buffer.get_mut(..len).ok_or_else(|| failed(&"output length"))?;
        argon2_into(
            Algorithm::Argon2id,
            Version::V0x13,
            self.params.clone(),
            password.as_bytes(),
            &salt,
            out,
        )
        .map_err(|e| failed(&e))?;
        let phc = PasswordHash {
            algorithm: ARGON2ID_IDENT,
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&self.params).map_err(|e| failed(&e))?,
            salt: Some(salt),
            hash: Some(Output::new(out).map_err(|e| failed(&e))?),
        };
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
            Self::Argon2(phc) => verify_phc(phc, presented.as_bytes()),
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
    fn argon2_hashes_interoperate_with_the_reference_implementation() {
        use argon2::PasswordHasher;
        let params = Params::new(64, 2, 1, None).unwrap();
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
            .hash_password(b"pw")
            .unwrap()
            .to_string();
        assert!(StoredHash::Argon2(theirs.clone()).verify("pw"));
        assert!(!StoredHash::Argon2(theirs).verify("pw "));
        // an argon2i string verifies too (with its own algorithm)
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x13, params.clone())
            .hash_password(b"pw")
            .unwrap()
            .to_string();
        assert!(argon2i.starts_with("$argon2i$"));
        assert!(StoredHash::Argon2(argon2i).verify("pw"));

        let StoredHash::Argon2(ours) = HashParams { params }.hash("pw").unwrap() else {
            panic!("argon2 expected")
        };
        Argon2::default().verify_password(b"pw", ours.as_str()).unwrap();
        assert!(Argon2::default().verify_password(b"px", ours.as_str()).is_err());
    }

    #[test]
    fn the_working_memory_pool_stays_bounded() {
        let params = HashParams::new(64, 1, 1).unwrap();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..4 {
                        assert!(params.hash("pw").unwrap().verify("pw"));
                    }
                });
            }
        });
        let pool = MEMORY.lock().unwrap();
        assert!(!pool.is_empty() && pool.len() <= *POOL_SIZE, "{} buffers", pool.len());
    }

    #[test]
    fn a_bigger_hash_after_a_smaller_one_gets_enough_memory() {
        let small = HashParams::new(16, 1, 1).unwrap().hash("a").unwrap();
        let big = HashParams::new(256, 1, 1).unwrap().hash("b").unwrap();
        assert!(small.verify("a") && big.verify("b") && small.verify("a"));
        assert!(!big.verify("a"));
    }

    #[test]
    fn bcrypt_and_sha512_crypt_verify() {
        let b = StoredHash::Bcrypt(bcrypt::hash("pw", 4).unwrap());
        assert!(b.verify("pw") && !b.verify("nope"));
        let s = StoredHash::Sha512(SHA512_HELLO.into());
        assert!(s.verify("Hello world!") && !s.verify("Hello world"));
        assert!(!StoredHash::Sha512("$5$x$y".into()).verify("Hello world!"));
        assert!(!StoredHash::Argon2("garbage".into()).verify(""));
        assert!(!StoredHash::Argon2("$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ".into()).verify(""));
        assert!(
            !StoredHash::Argon2("$argon2id$v=7$m=64,t=1,p=1$c2FsdHNhbHQ$AAAA".into()).verify("")
        );
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
