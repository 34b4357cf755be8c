//! The Merkle tree of RFC 6962 / RFC 9162: hashes, the append frontier, inclusion and
//! consistency proofs (generation from any [`NodeSource`], and verification).
//!
//! Leaf hash `SHA-256(0x00 || leaf)`, interior node `SHA-256(0x01 || left || right)`, the root of
//! the empty tree `SHA-256("")`. A tree of `n` leaves splits at the largest power of two below
//! `n` (RFC 9162 §2.1.1).

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(data);
    hasher.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The largest power of two strictly below `n` (`n` > 1).
fn split(n: u64) -> u64 {
    debug_assert!(n > 1);
    1 << (63 - (n - 1).leading_zeros())
}

/// The root of a tree over `hashes` (leaf hashes, or equal-sized complete subtree roots).
pub fn root_of(hashes: &[Hash]) -> Hash {
    match hashes.len() {
        0 => empty_root(),
        1 => hashes[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root_of(&hashes[..k]), &root_of(&hashes[k..]))
        }
    }
}

/// The roots of the complete subtrees that make up a tree of `size` leaves, largest first: what
/// appending needs to know, and enough to compute the root. At most 64 hashes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A frontier from its parts; `None` if `nodes` does not match `size` (one node per set bit).
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Option<Self> {
        (size.count_ones() as usize == nodes.len()).then_some(Self { size, nodes })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The subtree roots, largest first.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut size = self.size;
        while size & 1 == 1 {
            // Two complete subtrees of the same size merge into one.
            let left = self.nodes.pop().expect("one node per set bit of size");
            hash = node_hash(&left, &hash);
            size >>= 1;
        }
        self.nodes.push(hash);
        self.size += 1;
    }

    /// The tree's root.
    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        match nodes.next() {
            None => empty_root(),
            Some(last) => nodes.fold(*last, |right, left| node_hash(left, &right)),
        }
    }
}

/// Why a proof could not be made or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The leaf index is not below the tree size, or the sizes are out of order.
    #[error("invalid range: {0}")]
    Range(String),
    /// The proof has the wrong number of hashes for the sizes.
    #[error("proof has the wrong length")]
    Length,
    /// The recomputed root differs from the expected one.
    #[error("the proof does not lead to the expected root")]
    Mismatch,
    /// A node the proof needs is not available (pruned by retention, or unreadable).
    #[error("node hash unavailable: {0}")]
    Unavailable(String),
}

/// Where proof generation reads node hashes from.
pub trait NodeSource {
    /// The root of the complete or incomplete subtree of `size` leaves starting at leaf `start`
    /// (the MTH of `D[start:start+size]`).
    fn subtree(&self, start: u64, size: u64) -> Result<Hash, ProofError>;
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves (RFC 9162 §2.1.3.1).
pub fn inclusion_proof(
    src: &impl NodeSource,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError> {
    if index >= size {
        return Err(ProofError::Range(format!(
            "leaf {index} is not in a tree of {size}"
        )));
    }
    let mut proof = Vec::new();
    let (mut start, mut n, mut m) = (0u64, size, index);
    // Walk down from the root, collecting the sibling of each subtree on the path; the proof
    // lists them leaf-first, so they are reversed at the end.
    while n > 1 {
        let k = split(n);
        if m < k {
            proof.push(src.subtree(start + k, n - k)?);
            n = k;
        } else {
            proof.push(src.subtree(start, k)?);
            start += k;
            m -= k;
            n -= k;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// The consistency proof between the trees of `old` and `new` leaves (RFC 9162 §2.1.4.1).
pub fn consistency_proof(
    src: &impl NodeSource,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, ProofError> {
    if old > new {
        return Err(ProofError::Range(format!(
            "old size {old} is above new size {new}"
        )));
    }
    if old == 0 || old == new {
        return Ok(Vec::new());
    }
    let mut proof = Vec::new();
    let (mut start, mut n, mut m, mut complete) = (0u64, new, old, true);
    while m != n {
        let k = split(n);
        if m <= k {
            proof.push(src.subtree(start + k, n - k)?);
            n = k;
        } else {
            proof.push(src.subtree(start, k)?);
            start += k;
            m -= k;
            n -= k;
            complete = false;
        }
    }
    if !complete {
        proof.push(src.subtree(start, m)?);
    }
    proof.reverse();
    Ok(proof)
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::Range(format!(
            "leaf {index} is not in a tree of {size}"
        )));
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::Length);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::Length);
    }
    if r != *root {
        return Err(ProofError::Mismatch);
    }
    Ok(())
}

/// Verifies a consistency proof (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::Range(format!(
            "old size {old} is above new size {new}"
        )));
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::Length);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::Mismatch)
        };
    }
    if old == 0 {
        // Every tree extends the empty tree.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::Length)
        };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::Length);
    };
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return Err(ProofError::Length);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::Length);
    }
    if fr != *old_root || sr != *new_root {
        return Err(ProofError::Mismatch);
    }
    Ok(())
}

/// A [`NodeSource`] over leaf hashes held in memory (tests, small trees).
impl NodeSource for [Hash] {
    fn subtree(&self, start: u64, size: u64) -> Result<Hash, ProofError> {
        let end = start.checked_add(size).filter(|&e| e <= self.len() as u64);
        match end {
            Some(end) => Ok(root_of(&self[start as usize..end as usize])),
            None => Err(ProofError::Unavailable(format!("leaves {start}+{size}"))),
        }
    }
}

impl NodeSource for Vec<Hash> {
    fn subtree(&self, start: u64, size: u64) -> Result<Hash, ProofError> {
        self.as_slice().subtree(start, size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RFC 6962 test leaves used by the Certificate Transparency implementations.
    fn leaves() -> Vec<Hash> {
        let data: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        data.iter().map(|d| leaf_hash(d)).collect()
    }

    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn roots_match_the_rfc6962_vectors() {
        let leaves = leaves();
        let mut frontier = Frontier::new();
        assert_eq!(hex::encode(frontier.root()), ROOTS[0]);
        for (n, leaf) in leaves.iter().enumerate() {
            frontier.push(*leaf);
            assert_eq!(hex::encode(frontier.root()), ROOTS[n + 1], "size {}", n + 1);
            assert_eq!(hex::encode(root_of(&leaves[..=n])), ROOTS[n + 1]);
        }
    }

    #[test]
    fn every_inclusion_proof_verifies_and_tampering_fails() {
        let leaves: Vec<Hash> = (0u32..70).map(|i| leaf_hash(&i.to_le_bytes())).collect();
        for size in 1..=leaves.len() as u64 {
            let root = root_of(&leaves[..size as usize]);
            for index in 0..size {
                let proof = inclusion_proof(&leaves, index, size).unwrap();
                verify_inclusion(index, size, &leaves[index as usize], &proof, &root).unwrap();
                // Wrong leaf, wrong index, wrong root, tampered or shortened proof.
                let other = leaves[((index + 1) % size) as usize];
                if size > 1 {
                    assert!(verify_inclusion(index, size, &other, &proof, &root).is_err());
                    assert!(
                        verify_inclusion(
                            (index + 1) % size,
                            size,
                            &leaves[index as usize],
                            &proof,
                            &root
                        )
                        .is_err()
                    );
                    let mut bad = proof.clone();
                    bad[0][0] ^= 1;
                    assert!(
                        verify_inclusion(index, size, &leaves[index as usize], &bad, &root)
                            .is_err()
                    );
                    assert!(
                        verify_inclusion(index, size, &leaves[index as usize], &proof[1..], &root)
                            .is_err()
                    );
                }
                assert!(
                    verify_inclusion(index, size, &leaves[index as usize], &proof, &[0; 32])
                        .is_err()
                );
            }
            assert!(inclusion_proof(&leaves, size, size).is_err());
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_tampering_fails() {
        let leaves: Vec<Hash> = (0u32..40).map(|i| leaf_hash(&i.to_le_bytes())).collect();
        for new in 1..=leaves.len() as u64 {
            let new_root = root_of(&leaves[..new as usize]);
            for old in 1..=new {
                let old_root = root_of(&leaves[..old as usize]);
                let proof = consistency_proof(&leaves, old, new).unwrap();
                verify_consistency(old, new, &old_root, &new_root, &proof).unwrap();
                if old < new {
                    let mut bad = proof.clone();
                    bad[0][5] ^= 0x80;
                    assert!(verify_consistency(old, new, &old_root, &new_root, &bad).is_err());
                    assert!(verify_consistency(old, new, &new_root, &new_root, &proof).is_err());
                    // A different history of the same size is not consistent.
                    let mut forged = leaves[..new as usize].to_vec();
                    forged[0] = leaf_hash(b"forged");
                    assert!(
                        verify_consistency(old, new, &old_root, &root_of(&forged), &proof).is_err()
                    );
                }
            }
        }
    }

    #[test]
    fn known_proofs_from_the_rfc_vectors() {
        // Inclusion of leaf 0 in the tree of 8, as the CT test suites list it.
        let leaves = leaves();
        let proof = inclusion_proof(&leaves, 0, 8).unwrap();
        let hexes: Vec<String> = proof.iter().map(hex::encode).collect();
        assert_eq!(
            hexes,
            [
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ]
        );
        // Consistency from 1 to 8.
        let hexes: Vec<String> = consistency_proof(&leaves, 1, 8)
            .unwrap()
            .iter()
            .map(hex::encode)
            .collect();
        assert_eq!(hexes.len(), 3);
        assert_eq!(
            hexes[0],
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"
        );
    }

    #[test]
    fn frontier_parts_round_trip() {
        let mut frontier = Frontier::new();
        for i in 0u8..13 {
            frontier.push(leaf_hash(&[i]));
        }
        assert_eq!(frontier.nodes().len(), 3);
        let copy = Frontier::from_parts(13, frontier.nodes().to_vec()).unwrap();
        assert_eq!(copy.root(), frontier.root());
        assert!(Frontier::from_parts(12, frontier.nodes().to_vec()).is_none());
    }
}
