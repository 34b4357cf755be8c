//! Inclusion proofs of single records, as a self-contained bundle an auditor can keep and check
//! offline: the record's exact bytes, the checkpoint it is proven against, and the proof, also
//! in the C2SP tlog-proof text form (<https://c2sp.org/tlog-proof>).

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};

use super::{
    merkle::{Hash, inclusion_proof, leaf_hash, verify_inclusion},
    note::{Checkpoint, NoteVerifier, SignedNote},
    reader::LogReader,
};
use crate::json::Obj;

/// A record with its inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofBundle {
    /// The record's sequence number (its leaf index).
    pub seq: u64,
    /// The record's exact bytes.
    pub leaf: String,
    /// The signed checkpoint the proof leads to.
    pub checkpoint: String,
    /// The sibling hashes, leaf first.
    pub proof: Vec<Hash>,
}

/// Why a bundle could not be made or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BundleError(pub String);

impl ProofBundle {
    /// Proves record `seq` against `checkpoint` (a signed note of this log).
    pub fn make(
        reader: &LogReader,
        seq: u64,
        checkpoint: &SignedNote,
    ) -> Result<Self, BundleError> {
        let parsed =
            Checkpoint::parse_body(&checkpoint.body).map_err(|e| BundleError(e.to_string()))?;
        if seq >= parsed.size {
            return Err(BundleError(format!(
                "seq {seq} is not covered by the latest checkpoint (size {}); try again after the next checkpoint",
                parsed.size
            )));
        }
        let leaf = reader.leaf(seq).map_err(|e| BundleError(e.to_string()))?;
        let proof =
            inclusion_proof(reader, seq, parsed.size).map_err(|e| BundleError(e.to_string()))?;
        Ok(Self {
            seq,
            leaf: String::from_utf8(leaf)
                .map_err(|_| BundleError("the record is not UTF-8".into()))?,
            checkpoint: checkpoint.to_text(),
            proof,
        })
    }

    /// The proof in C2SP tlog-proof form.
    pub fn tlog_proof(&self) -> String {
        let mut text = format!("c2sp.org/tlog-proof@v1\nindex {}\n", self.seq);
        for hash in &self.proof {
            text.push_str(&B64.encode(hash));
            text.push('\n');
        }
        text.push('\n');
        text.push_str(&self.checkpoint);
        text
    }

    /// The bundle as a JSON document.
    pub fn to_json(&self) -> Vec<u8> {
        let hashes: Vec<String> = self.proof.iter().map(hex::encode).collect();
        let mut obj = Obj::new();
        obj.str("format", "custos-inclusion-proof/v1")
            .u64("seq", self.seq)
            .str("leaf", &self.leaf)
            .str("leaf_hash", &hex::encode(leaf_hash(self.leaf.as_bytes())))
            .str("checkpoint", &self.checkpoint)
            .strs("proof", hashes.iter().map(String::as_str))
            .str("tlog_proof", &self.tlog_proof());
        obj.to_bytes()
    }

    /// Parses [`Self::to_json`] output.
    pub fn from_json(bytes: &[u8]) -> Result<Self, BundleError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| BundleError(format!("not JSON: {e}")))?;
        if value["format"] != "custos-inclusion-proof/v1" {
            return Err(BundleError(
                "not a custos-inclusion-proof/v1 document".into(),
            ));
        }
        let text = |name: &str| {
            value[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| BundleError(format!("missing `{name}`")))
        };
        let proof = value["proof"]
            .as_array()
            .ok_or_else(|| BundleError("missing `proof`".into()))?
            .iter()
            .map(|h| {
                h.as_str()
                    .and_then(|h| hex::decode(h).ok())
                    .and_then(|b| Hash::try_from(b).ok())
                    .ok_or_else(|| {
                        BundleError("`proof` holds something that is not a hex SHA-256".into())
                    })
            })
            .collect::<Result<Vec<Hash>, _>>()?;
        Ok(Self {
            seq: value["seq"]
                .as_u64()
                .ok_or_else(|| BundleError("missing `seq`".into()))?,
            leaf: text("leaf")?,
            checkpoint: text("checkpoint")?,
            proof,
        })
    }

    /// Checks the bundle: the checkpoint's signature by one of `keys`, the record's `seq`, and
    /// the inclusion proof. Returns the checkpoint.
    pub fn verify(&self, keys: &[NoteVerifier]) -> Result<Checkpoint, BundleError> {
        let note = SignedNote::parse(&self.checkpoint)
            .map_err(|e| BundleError(format!("checkpoint: {e}")))?;
        note.verified_by(keys)
            .map_err(|e| BundleError(format!("checkpoint: {e}")))?;
        let checkpoint = Checkpoint::parse_body(&note.body)
            .map_err(|e| BundleError(format!("checkpoint: {e}")))?;
        let record: serde_json::Value = serde_json::from_str(&self.leaf)
            .map_err(|e| BundleError(format!("the record is not JSON: {e}")))?;
        if record["seq"].as_u64() != Some(self.seq) {
            return Err(BundleError(format!(
                "the record says seq {}, the proof is for {}",
                record["seq"], self.seq
            )));
        }
        verify_inclusion(
            self.seq,
            checkpoint.size,
            &leaf_hash(self.leaf.as_bytes()),
            &self.proof,
            &checkpoint.root,
        )
        .map_err(|e| BundleError(format!("inclusion proof: {e}")))?;
        Ok(checkpoint)
    }
}
