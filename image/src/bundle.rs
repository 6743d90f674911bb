//! The bundle file, keys and the keyring.
//!
//! A bundle is one file (integers little-endian):
//!
//! | offset | length | content |
//! |---|---|---|
//! | 0 | 8 | magic `GWBUNDLE` |
//! | 8 | 2 | format version, 1 |
//! | 10 | 2 | reserved, 0 |
//! | 12 | 4 | manifest length `M` (1 to 65,536) |
//! | 16 | `M` | the manifest, UTF-8 TOML ([`crate::manifest`]) |
//! | 16+`M` | 32 | the signer's ed25519 public key |
//! | 48+`M` | 64 | ed25519 signature of bytes 0 to 16+`M` (header and manifest) |
//! | 112+`M` | sizes | the manifest's images, in its order, each exactly `size` bytes |
//!
//! The file ends with the last image. The signature covers the manifest, and the manifest holds
//! each image's SHA-256, so one signature check and one hash per image trust every byte. The
//! signature is checked before the manifest is parsed.
//!
//! Key files are one line: `ed25519-secret:<base64 of the 32-byte seed>` (mode 0600) and
//! `ed25519:<base64 of the 32-byte public key>`. A keyring is a directory of `*.pub` files.

use std::{
    fs::File,
    io::{self, BufWriter, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::{
    ImageError, hex,
    manifest::{Image, MAX_MANIFEST_BYTES, Manifest},
};

pub const MAGIC: &[u8; 8] = b"GWBUNDLE";
pub const FORMAT_VERSION: u16 = 1;
const HEADER_LEN: u64 = 16;
const SIGNATURE_BLOCK_LEN: u64 = 32 + 64;
const SECRET_PREFIX: &str = "ed25519-secret:";
const PUBLIC_PREFIX: &str = "ed25519:";

/// A signing key.
pub struct SecretKey(SigningKey);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", key_id(&self.0.verifying_key()))
    }
}

impl SecretKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Self {
        let seed: [u8; 32] = rand::random();
        Self(SigningKey::from_bytes(&seed))
    }

    pub fn load(path: &Path) -> Result<Self, ImageError> {
        let seed = read_key_file(path, SECRET_PREFIX)?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// Writes the key (mode 0600, never over an existing file) and its public key beside it.
    pub fn save(&self, path: &Path) -> Result<(), ImageError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(ImageError::io("cannot create", path))?;
        writeln!(f, "{SECRET_PREFIX}{}", B64.encode(self.0.to_bytes()))
            .and_then(|()| f.sync_all())
            .map_err(ImageError::io("cannot write", path))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }
}

/// A public key: what a keyring holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn load(path: &Path) -> Result<Self, ImageError> {
        let bytes = read_key_file(path, PUBLIC_PREFIX)?;
        VerifyingKey::from_bytes(&bytes).map(Self).map_err(|e| ImageError::Key {
            path: path.to_owned(),
            reason: format!("not an ed25519 public key ({e})"),
        })
    }

    pub fn save(&self, path: &Path) -> Result<(), ImageError> {
        std::fs::write(path, format!("{PUBLIC_PREFIX}{}\n", B64.encode(self.0.to_bytes())))
            .map_err(ImageError::io("cannot write", path))
    }

    /// A short name for the key: the first 8 bytes of its SHA-256, in hex.
    pub fn id(&self) -> String {
        key_id(&self.0)
    }
}

fn key_id(key: &VerifyingKey) -> String {
    hex(&Sha256::digest(key.to_bytes())[..8])
}

fn read_key_file(path: &Path, prefix: &str) -> Result<[u8; 32], ImageError> {
    let text = std::fs::read_to_string(path).map_err(ImageError::io("cannot read", path))?;
    let bad = |reason: &str| ImageError::Key { path: path.to_owned(), reason: reason.to_owned() };
    let body = text.trim().strip_prefix(prefix).ok_or_else(|| {
        let other = if prefix == SECRET_PREFIX { PUBLIC_PREFIX } else { SECRET_PREFIX };
        if text.trim().starts_with(other) {
            bad(&format!("this is not a {} key", prefix.trim_end_matches(':')))
        } else {
            bad(&format!("expected one line starting with {prefix:?}"))
        }
    })?;
    let bytes = B64.decode(body).map_err(|e| bad(&format!("bad base64 ({e})")))?;
    bytes.try_into().map_err(|_| bad("the key is not 32 bytes"))
}

/// The public keys a gateway trusts: every `*.pub` file of a directory.
#[derive(Clone, Debug)]
pub struct Keyring {
    dir: PathBuf,
    keys: Vec<(String, PublicKey)>,
}

impl Keyring {
    /// Loads every `*.pub` file of `dir`; an empty keyring, or a key that does not parse, is an
    /// error (a gateway that trusts nothing cannot be updated, and a typo should be seen).
    pub fn load(dir: &Path) -> Result<Self, ImageError> {
        let entries = std::fs::read_dir(dir).map_err(ImageError::io("cannot read keyring", dir))?;
        let mut keys = Vec::new();
        for entry in entries {
            let path = entry.map_err(ImageError::io("cannot read keyring", dir))?.path();
            if path.extension().is_some_and(|e| e == "pub") {
                let name = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
                keys.push((name, PublicKey::load(&path)?));
            }
        }
        if keys.is_empty() {
            return Err(ImageError::Keyring {
                path: dir.to_owned(),
                reason: "no public keys (*.pub) in it".into(),
            });
        }
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self { dir: dir.to_owned(), keys })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The name (file stem) of the key equal to `key`.
    pub fn find(&self, key: &PublicKey) -> Option<&str> {
        self.keys.iter().find(|(_, k)| k == key).map(|(n, _)| n.as_str())
    }
}

/// A bundle file opened and checked: signature (unless opened for information only), manifest
/// and length. Its images are read from the file when installed.
#[derive(Debug)]
pub struct Bundle {
    path: PathBuf,
    manifest: Manifest,
    signer: PublicKey,
    /// The keyring's name of the signer; `None` when opened without a keyring.
    trusted_as: Option<String>,
    payload_offset: u64,
}

struct Raw {
    signed: Vec<u8>,
    manifest_text: String,
    signer: PublicKey,
    signature: Signature,
    payload_offset: u64,
    file_len: u64,
}

impl Bundle {
    /// Opens a bundle and verifies it: the signer is in `keyring` and its signature holds, then
    /// the manifest parses and the file's length is the manifest's images.
    pub fn open(path: &Path, keyring: &Keyring) -> Result<Self, ImageError> {
        let raw = read_raw(path)?;
        let name = keyring.find(&raw.signer).ok_or_else(|| ImageError::UntrustedSigner {
            path: path.to_owned(),
            keyring: keyring.dir().to_owned(),
            key_id: raw.signer.id(),
        })?;
        raw.signer.0.verify(&raw.signed, &raw.signature).map_err(|_| ImageError::BadSignature {
            path: path.to_owned(),
            key_id: raw.signer.id(),
        })?;
        Self::finish(path, raw, Some(name.to_owned()))
    }

    /// Opens a bundle without checking its signature (`gateway-image info`): never install
    /// from what this returns.
    pub fn open_unverified(path: &Path) -> Result<Self, ImageError> {
        let raw = read_raw(path)?;
        Self::finish(path, raw, None)
    }

    fn finish(path: &Path, raw: Raw, trusted_as: Option<String>) -> Result<Self, ImageError> {
        let manifest = Manifest::parse(&raw.manifest_text)?;
        let expected = raw.payload_offset.saturating_add(manifest.payload_len());
        if raw.file_len != expected {
            return Err(ImageError::NotABundle {
                path: path.to_owned(),
                reason: format!(
                    "{} bytes, but the manifest's images make {expected}",
                    raw.file_len
                ),
            });
        }
        Ok(Self {
            path: path.to_owned(),
            manifest,
            signer: raw.signer,
            trusted_as,
            payload_offset: raw.payload_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn signer(&self) -> &PublicKey {
        &self.signer
    }

    /// The keyring's name for the signer, when the bundle was verified.
    pub fn trusted_as(&self) -> Option<&str> {
        self.trusted_as.as_deref()
    }

    /// A reader of one image's bytes (exactly its size, unless the file changed under us).
    pub fn image_reader(&self, image: &Image) -> Result<impl Read + use<>, ImageError> {
        let mut offset = self.payload_offset;
        for i in &self.manifest.images {
            if i == image {
                break;
            }
            offset += i.size;
        }
        let mut f = File::open(&self.path).map_err(ImageError::io("cannot open", &self.path))?;
        f.seek(SeekFrom::Start(offset)).map_err(ImageError::io("cannot read", &self.path))?;
        Ok(f.take(image.size))
    }

    /// Hashes every image and compares it with the manifest (`gateway-image verify`).
    pub fn check_images(&self) -> Result<(), ImageError> {
        for image in &self.manifest.images {
            let mut reader = self.image_reader(image)?;
            let (len, hash) = hash_reader(&mut reader, &mut io::sink())
                .map_err(ImageError::io("cannot read", &self.path))?;
            if len < image.size {
                return Err(ImageError::Truncated {
                    name: image.name.clone(),
                    missing: image.size - len,
                });
            }
            if hash != image.sha256 {
                return Err(ImageError::HashMismatch {
                    name: image.name.clone(),
                    expected: image.sha256.clone(),
                    actual: hash,
                });
            }
        }
        Ok(())
    }
}

/// Copies `reader` into `writer` while hashing: (bytes copied, lower-case hex SHA-256).
pub fn hash_reader(reader: &mut impl Read, writer: &mut impl Write) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((total, hex(&hasher.finalize())))
}

fn read_raw(path: &Path) -> Result<Raw, ImageError> {
    let not = |reason: String| ImageError::NotABundle { path: path.to_owned(), reason };
    let mut f = File::open(path).map_err(ImageError::io("cannot open", path))?;
    let file_len = f.metadata().map_err(ImageError::io("cannot read", path))?.len();
    let mut header = [0u8; HEADER_LEN as usize];
    f.read_exact(&mut header).map_err(|_| not("shorter than a bundle header".into()))?;
    if &header[..8] != MAGIC {
        return Err(not("no GWBUNDLE magic at its start".into()));
    }
    let version = u16::from_le_bytes([header[8], header[9]]);
    if version != FORMAT_VERSION {
        return Err(not(format!("format version {version}; this tool reads {FORMAT_VERSION}")));
    }
    let manifest_len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    if manifest_len == 0 || manifest_len as usize > MAX_MANIFEST_BYTES {
        return Err(not(format!("manifest length {manifest_len}; 1 to {MAX_MANIFEST_BYTES}")));
    }
    let payload_offset = HEADER_LEN + u64::from(manifest_len) + SIGNATURE_BLOCK_LEN;
    if file_len < payload_offset {
        return Err(not("the file ends inside the manifest or the signature".into()));
    }
    let mut signed = header.to_vec();
    signed.resize(HEADER_LEN as usize + manifest_len as usize, 0);
    f.read_exact(&mut signed[HEADER_LEN as usize..])
        .map_err(ImageError::io("cannot read", path))?;
    let mut block = [0u8; SIGNATURE_BLOCK_LEN as usize];
    f.read_exact(&mut block).map_err(ImageError::io("cannot read", path))?;
    let key: [u8; 32] = block[..32].try_into().map_err(|_| not("signature block".into()))?;
    let signer = VerifyingKey::from_bytes(&key)
        .map(PublicKey)
        .map_err(|_| not("the signer's key is not an ed25519 point".into()))?;
    let sig: [u8; 64] = block[32..].try_into().map_err(|_| not("signature block".into()))?;
    let manifest_text = String::from_utf8(signed[HEADER_LEN as usize..].to_vec())
        .map_err(|_| not("the manifest is not UTF-8".into()))?;
    Ok(Raw {
        signed,
        manifest_text,
        signer,
        signature: Signature::from_bytes(&sig),
        payload_offset,
        file_len,
    })
}

fn header_and_manifest(manifest_text: &str) -> Result<Vec<u8>, ImageError> {
    let len = u32::try_from(manifest_text.len())
        .ok()
        .filter(|l| *l as usize <= MAX_MANIFEST_BYTES)
        .ok_or_else(|| ImageError::Manifest("longer than 64 KiB".into()))?;
    let mut out = Vec::with_capacity(HEADER_LEN as usize + manifest_text.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(manifest_text.as_bytes());
    Ok(out)
}

/// What to put in a new bundle.
#[derive(Debug)]
pub struct BundleSpec<'a> {
    pub compatible: String,
    pub version: semver::Version,
    /// RFC 3339 UTC; `None`: now.
    pub build: Option<String>,
    pub description: Option<String>,
    /// (slot class, image file).
    pub images: Vec<(String, &'a Path)>,
}

/// Writes a signed bundle: hashes each image, writes the manifest, signs it, appends the images.
/// The file appears complete or not at all (written beside `out`, then renamed).
pub fn create(spec: &BundleSpec<'_>, key: &SecretKey, out: &Path) -> Result<Manifest, ImageError> {
    let mut images = Vec::new();
    for (class, file) in &spec.images {
        let mut f = File::open(file).map_err(ImageError::io("cannot open image", *file))?;
        let (size, sha256) =
            hash_reader(&mut f, &mut io::sink()).map_err(ImageError::io("cannot read", *file))?;
        let name = file.file_name().unwrap_or_default().to_string_lossy().into_owned();
        images.push(Image { slot_class: class.clone(), name, size, sha256 });
    }
    let build = spec.build.clone().unwrap_or_else(|| {
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
    });
    let manifest = Manifest {
        compatible: spec.compatible.clone(),
        version: spec.version.clone(),
        build,
        description: spec.description.clone(),
        images,
    };
    let signed = header_and_manifest(&manifest.to_toml()?)?;
    let signature = key.0.sign(&signed);
    write_atomically(out, |w| {
        w.write_all(&signed)?;
        w.write_all(&key.0.verifying_key().to_bytes())?;
        w.write_all(&signature.to_bytes())?;
        for ((_, file), image) in spec.images.iter().zip(&manifest.images) {
            let (n, hash) = hash_reader(&mut File::open(file)?.take(image.size), w)?;
            if n != image.size || hash != image.sha256 {
                return Err(io::Error::other(format!(
                    "{} changed while it was bundled",
                    file.display()
                )));
            }
        }
        Ok(())
    })?;
    Ok(manifest)
}

/// Signs a bundle's manifest again with `key` (a new signer, or a renewed key), writing the
/// result to `out` (which may be the bundle itself). The manifest and images are unchanged;
/// the old signature is not checked, so check the bundle first when it matters.
pub fn resign(bundle: &Path, key: &SecretKey, out: &Path) -> Result<(), ImageError> {
    let raw = read_raw(bundle)?;
    Manifest::parse(&raw.manifest_text)?;
    let signature = key.0.sign(&raw.signed);
    write_atomically(out, |w| {
        w.write_all(&raw.signed)?;
        w.write_all(&key.0.verifying_key().to_bytes())?;
        w.write_all(&signature.to_bytes())?;
        let mut f = File::open(bundle)?;
        f.seek(SeekFrom::Start(raw.payload_offset))?;
        let n = io::copy(&mut f, w)?;
        if n != raw.file_len - raw.payload_offset {
            return Err(io::Error::other("the bundle changed while it was signed"));
        }
        Ok(())
    })
}

fn write_atomically(
    out: &Path,
    body: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> Result<(), ImageError> {
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".bundle-")
        .tempfile_in(dir)
        .map_err(ImageError::io("cannot create a file in", dir))?;
    // Bundles are not secret: readable like any file (the temporary file starts at 0600).
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(ImageError::io("cannot write", out))?;
    let mut w = BufWriter::new(tmp.reopen().map_err(ImageError::io("cannot write", out))?);
    body(&mut w)
        .and_then(|()| w.flush())
        .and_then(|()| w.get_ref().sync_all())
        .map_err(ImageError::io("cannot write", out))?;
    tmp.persist(out).map_err(|e| ImageError::Io {
        what: "cannot write",
        path: out.to_owned(),
        source: e.error,
    })?;
    Ok(())
}
