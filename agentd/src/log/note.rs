//! C2SP signed notes and tlog checkpoints (<https://c2sp.org/signed-note>,
//! <https://c2sp.org/tlog-checkpoint>), with Ed25519 signatures.
//!
//! A checkpoint's body is `origin\nsize\nbase64(root)\n`; the note is the body, a blank line, and
//! one line per signature: `— <key name> base64(key id || signature)`. The key id is the first
//! four bytes of `SHA-256(key name || "\n" || 0x01 || public key)`. Keys are written in the
//! formats the Go `note` package uses: `name+hexid+base64(0x01||key)` for verifiers and
//! `PRIVATE+KEY+name+hexid+base64(0x01||seed)` for signers.

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::merkle::Hash;

/// The signature-type byte of Ed25519 in signed notes.
const ED25519: u8 = 0x01;
/// The prefix of a signature line: an em dash and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// A malformed note, key or checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// The text does not follow the format.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Note, checkpoint or key.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// No signature by a trusted key verifies.
    #[error("no valid signature by a trusted key ({0})")]
    Unverified(String),
}

fn malformed(what: &'static str, detail: impl Into<String>) -> NoteError {
    NoteError::Malformed {
        what,
        detail: detail.into(),
    }
}

/// The key id of `name` and Ed25519 public key `key`.
pub fn key_id(name: &str, key: &[u8; 32]) -> [u8; 4] {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(b"\n");
    hasher.update([ED25519]);
    hasher.update(key);
    let digest = hasher.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

fn valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

/// A signer: a named Ed25519 key.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key: SigningKey,
    id: [u8; 4],
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("id", &hex::encode(self.id))
            .finish()
    }
}

impl NoteSigner {
    /// A signer named `name` with private seed `seed`.
    pub fn new(name: &str, seed: [u8; 32]) -> Result<Self, NoteError> {
        if !valid_key_name(name) {
            return Err(malformed("key", format!("invalid key name {name:?}")));
        }
        let key = SigningKey::from_bytes(&seed);
        let id = key_id(name, key.verifying_key().as_bytes());
        Ok(Self {
            name: name.to_owned(),
            key,
            id,
        })
    }

    /// Parses `PRIVATE+KEY+name+hexid+base64(0x01||seed)`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| malformed("private key", "missing PRIVATE+KEY+ prefix"))?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed("private key", "expected name+id+key"));
        };
        let bytes = B64
            .decode(key)
            .map_err(|_| malformed("private key", "key is not base64"))?;
        let [ED25519, seed @ ..] = bytes.as_slice() else {
            return Err(malformed("private key", "not an Ed25519 key"));
        };
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| malformed("private key", "wrong key length"))?;
        let signer = Self::new(name, seed)?;
        if hex::encode(signer.id) != id {
            return Err(malformed("private key", "key id does not match the key"));
        }
        Ok(signer)
    }

    /// `PRIVATE+KEY+name+hexid+base64(0x01||seed)`: the secret; handle with care.
    pub fn to_private_string(&self) -> String {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(&self.key.to_bytes());
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex::encode(self.id),
            B64.encode(bytes)
        )
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key: self.key.verifying_key(),
            id: self.id,
        }
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Signs `body` (which must end with a newline) and returns the signature line without its
    /// trailing newline.
    pub fn sign_line(&self, body: &str) -> String {
        let signature = self.key.sign(body.as_bytes());
        let mut bytes = self.id.to_vec();
        bytes.extend_from_slice(&signature.to_bytes());
        format!("{SIG_PREFIX}{} {}", self.name, B64.encode(bytes))
    }

    /// Signs arbitrary bytes (used for key-rotation statements).
    pub fn sign_bytes(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

/// A verifier: a named Ed25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key: VerifyingKey,
    id: [u8; 4],
}

impl std::fmt::Debug for NoteVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl std::fmt::Display for NoteVerifier {
    /// `name+hexid+base64(0x01||key)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{}+{}",
            self.name,
            hex::encode(self.id),
            B64.encode(bytes)
        )
    }
}

impl NoteVerifier {
    /// Parses `name+hexid+base64(0x01||key)`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed("public key", "expected name+id+key"));
        };
        if !valid_key_name(name) {
            return Err(malformed(
                "public key",
                format!("invalid key name {name:?}"),
            ));
        }
        let bytes = B64
            .decode(key)
            .map_err(|_| malformed("public key", "key is not base64"))?;
        let [ED25519, key @ ..] = bytes.as_slice() else {
            return Err(malformed("public key", "not an Ed25519 key"));
        };
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| malformed("public key", "wrong key length"))?;
        let computed = key_id(name, &key);
        if hex::encode(computed) != id {
            return Err(malformed("public key", "key id does not match the key"));
        }
        let key = VerifyingKey::from_bytes(&key)
            .map_err(|_| malformed("public key", "not a valid Ed25519 point"))?;
        Ok(Self {
            name: name.to_owned(),
            key,
            id: computed,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn id(&self) -> [u8; 4] {
        self.id
    }

    /// Checks a signature over arbitrary bytes.
    pub fn verify_bytes(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        self.key.verify_strict(message, &signature).is_ok()
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// Key name.
    pub name: String,
    /// Key id.
    pub id: [u8; 4],
    /// The signature bytes (64 for Ed25519; other algorithms may differ).
    pub signature: Vec<u8>,
}

/// A signed note: a body and its signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNote {
    /// The signed text, ending with a newline.
    pub body: String,
    /// The signatures, in order.
    pub signatures: Vec<NoteSignature>,
}

impl SignedNote {
    /// Parses a note: body, blank line, signature lines.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let split = text
            .rfind("\n\n")
            .ok_or_else(|| malformed("note", "no blank line before the signatures"))?;
        let body = &text[..split + 1];
        let sigs = &text[split + 2..];
        if body.contains("\n\n") || body.is_empty() {
            return Err(malformed("note", "the body has blank lines"));
        }
        let mut signatures = Vec::new();
        for line in sigs.strip_suffix('\n').unwrap_or(sigs).split('\n') {
            let rest = line
                .strip_prefix(SIG_PREFIX)
                .ok_or_else(|| malformed("note", format!("not a signature line: {line:?}")))?;
            let (name, sig) = rest
                .split_once(' ')
                .ok_or_else(|| malformed("note", "signature line without a signature"))?;
            let bytes = B64
                .decode(sig)
                .map_err(|_| malformed("note", "signature is not base64"))?;
            if bytes.len() < 5 || !valid_key_name(name) {
                return Err(malformed("note", "signature too short or bad key name"));
            }
            signatures.push(NoteSignature {
                name: name.to_owned(),
                id: [bytes[0], bytes[1], bytes[2], bytes[3]],
                signature: bytes[4..].to_vec(),
            });
        }
        if signatures.is_empty() {
            return Err(malformed("note", "no signatures"));
        }
        Ok(Self {
            body: body.to_owned(),
            signatures,
        })
    }

    /// The note's text.
    pub fn to_text(&self) -> String {
        let mut text = self.body.clone();
        text.push('\n');
        for sig in &self.signatures {
            let mut bytes = sig.id.to_vec();
            bytes.extend_from_slice(&sig.signature);
            text.push_str(&format!("{SIG_PREFIX}{} {}\n", sig.name, B64.encode(bytes)));
        }
        text
    }

    /// Signs `body` with every signer.
    pub fn sign(body: &str, signers: &[&NoteSigner]) -> Self {
        let text = signers
            .iter()
            .map(|s| s.sign_line(body) + "\n")
            .collect::<String>();
        Self::parse(&format!("{body}\n{text}")).expect("a note built here parses")
    }

    /// The first of `verifiers` whose signature on this note checks out. Signatures by unknown
    /// keys are ignored, as the spec requires.
    pub fn verified_by<'v>(
        &self,
        verifiers: &'v [NoteVerifier],
    ) -> Result<&'v NoteVerifier, NoteError> {
        for verifier in verifiers {
            for sig in &self.signatures {
                if sig.name == verifier.name
                    && sig.id == verifier.id
                    && let Ok(signature) = <[u8; 64]>::try_from(sig.signature.as_slice())
                    && verifier.verify_bytes(self.body.as_bytes(), &signature)
                {
                    return Ok(verifier);
                }
            }
        }
        let names: Vec<String> = self
            .signatures
            .iter()
            .map(|s| format!("{}+{}", s.name, hex::encode(s.id)))
            .collect();
        Err(NoteError::Unverified(format!(
            "signed by {}",
            names.join(", ")
        )))
    }
}

/// A checkpoint: the log's origin, size and root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's unique name.
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// Root hash of the tree of `size` leaves.
    pub root: Hash,
}

impl Checkpoint {
    /// The note body: `origin\nsize\nbase64(root)\n`.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Parses a checkpoint body (extension lines are allowed and ignored).
    pub fn parse_body(body: &str) -> Result<Self, NoteError> {
        let mut lines = body.strip_suffix('\n').unwrap_or(body).split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(malformed(
                "checkpoint",
                "expected origin, size and root lines",
            ));
        };
        if origin.is_empty() {
            return Err(malformed("checkpoint", "empty origin"));
        }
        let size: u64 = size
            .parse()
            .map_err(|_| malformed("checkpoint", format!("size {size:?} is not a number")))?;
        if size.to_string().len() != size_len(body) {
            return Err(malformed("checkpoint", "size has leading zeros"));
        }
        let root = B64
            .decode(root)
            .map_err(|_| malformed("checkpoint", "root is not base64"))?;
        let root: Hash = root
            .try_into()
            .map_err(|_| malformed("checkpoint", "root is not 32 bytes"))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

fn size_len(body: &str) -> usize {
    body.split('\n').nth(1).map_or(0, str::len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(name: &str, byte: u8) -> NoteSigner {
        NoteSigner::new(name, [byte; 32]).unwrap()
    }

    #[test]
    fn keys_round_trip_through_their_text_forms() {
        let s = signer("example.com/log", 7);
        let private = s.to_private_string();
        assert!(private.starts_with("PRIVATE+KEY+example.com/log+"));
        let again = NoteSigner::parse(&private).unwrap();
        assert_eq!(again.verifier(), s.verifier());
        let public = s.verifier().to_string();
        assert_eq!(NoteVerifier::parse(&public).unwrap(), s.verifier());
        // A tampered key id or key is refused.
        let mut bad = public.clone();
        bad.replace_range(
            public.find('+').unwrap() + 1..public.find('+').unwrap() + 2,
            "z",
        );
        assert!(NoteVerifier::parse(&bad).is_err());
        assert!(NoteVerifier::parse("name+00000000+AQ==").is_err());
        assert!(NoteSigner::new("bad name", [1; 32]).is_err());
    }

    #[test]
    fn checkpoints_sign_parse_and_verify() {
        let s = signer("custos/test", 1);
        let checkpoint = Checkpoint {
            origin: "custos/test".into(),
            size: 42,
            root: [9; 32],
        };
        let note = SignedNote::sign(&checkpoint.body(), &[&s]);
        let text = note.to_text();
        assert!(text.starts_with("custos/test\n42\nCQkJ"));
        assert!(text.contains("\n\n\u{2014} custos/test "));
        let parsed = SignedNote::parse(&text).unwrap();
        assert_eq!(parsed, note);
        assert_eq!(Checkpoint::parse_body(&parsed.body).unwrap(), checkpoint);
        assert!(parsed.verified_by(&[s.verifier()]).is_ok());
        // Another key's signature does not verify; an altered body does not verify.
        assert!(
            parsed
                .verified_by(&[signer("custos/test", 2).verifier()])
                .is_err()
        );
        let altered = SignedNote {
            body: parsed.body.replace("42", "43"),
            ..parsed.clone()
        };
        assert!(altered.verified_by(&[s.verifier()]).is_err());
        // Unknown signatures are ignored: a cosigned note still verifies.
        let cosigned = SignedNote::sign(&checkpoint.body(), &[&signer("witness", 3), &s]);
        assert!(cosigned.verified_by(&[s.verifier()]).is_ok());
    }

    #[test]
    fn malformed_notes_are_refused() {
        assert!(SignedNote::parse("no signatures\n").is_err());
        assert!(SignedNote::parse("body\n\nnot a signature\n").is_err());
        assert!(SignedNote::parse("body\n\n\u{2014} k !!!\n").is_err());
        assert!(Checkpoint::parse_body("origin\n042\nAAAA\n").is_err());
        assert!(Checkpoint::parse_body("origin\n1\n").is_err());
        assert!(Checkpoint::parse_body("origin\nx\nAAAA\n").is_err());
    }
}
