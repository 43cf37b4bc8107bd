//! The log as C2SP `tlog-tiles`: tile paths, hash tiles of 256 Merkle Tree Hashes and
//! entry bundles of big-endian u16 length-prefixed entries.
//!
//! The n-th tile at level l holds MTH(D[(n·256 + i)·256^l : (n·256 + i + 1)·256^l]) for
//! i below its width; a full tile is 256 hashes wide and a partial one 1 to 255.

use crate::tree::{LeafSource, MerkleTree, Unreadable};

/// Hashes in a full tile.
pub const TILE_WIDTH: u64 = 256;

/// The largest entry an entry bundle can hold: its length is a u16.
pub const MAX_ENTRY_BYTES: usize = u16::MAX as usize;

/// What a tile path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileKind {
    /// Hashes at a level (0 to 63).
    Hashes(u8),
    /// The entries under the level-0 tile of the same index.
    Entries,
}

/// A parsed `tile/<L>/<N>[.p/<W>]` or `tile/entries/<N>[.p/<W>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TilePath {
    pub kind: TileKind,
    pub index: u64,
    /// 1 to 256; 256 is a full tile.
    pub width: u16,
}

fn decimal(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

impl TilePath {
    /// Parses a path below the log's prefix, such as `tile/0/x001/x234/067.p/12`.
    pub fn parse(path: &str) -> Result<TilePath, String> {
        let bad = |why: &str| format!("`{path}` is not a tile path: {why}");
        let rest = path
            .strip_prefix("tile/")
            .ok_or_else(|| bad("it starts with tile/"))?;
        let (level, rest) = rest
            .split_once('/')
            .ok_or_else(|| bad("a level and an index follow tile/"))?;
        let kind = if level == "entries" {
            TileKind::Entries
        } else {
            match decimal(level) {
                Some(l) if l <= 63 => TileKind::Hashes(l as u8),
                _ => return Err(bad("the level is entries or 0 to 63 in decimal")),
            }
        };
        let (index, width) = match rest.split_once(".p/") {
            Some((index, width)) => match decimal(width) {
                Some(w @ 1..=255) => (index, w as u16),
                _ => return Err(bad("a partial tile's width is 1 to 255 in decimal")),
            },
            None => (rest, TILE_WIDTH as u16),
        };
        let elements: Vec<&str> = index.split('/').collect();
        let mut n: u64 = 0;
        for (i, element) in elements.iter().enumerate() {
            let last = i + 1 == elements.len();
            let digits = if last {
                *element
            } else {
                element
                    .strip_prefix('x')
                    .ok_or_else(|| bad("every index element but the last begins with x"))?
            };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("index elements are three digits"));
            }
            if i == 0 && !last && digits == "000" {
                return Err(bad("the index has a leading zero element"));
            }
            let value: u64 = digits.parse().expect("three digits");
            n = n
                .checked_mul(1000)
                .and_then(|n| n.checked_add(value))
                .ok_or_else(|| bad("the index is too large"))?;
        }
        Ok(TilePath {
            kind,
            index: n,
            width,
        })
    }

    /// The path's text, `tile/…`.
    pub fn path(&self) -> String {
        let level = match self.kind {
            TileKind::Hashes(l) => l.to_string(),
            TileKind::Entries => "entries".to_owned(),
        };
        let mut elements = Vec::new();
        let mut n = self.index;
        loop {
            elements.push(n % 1000);
            n /= 1000;
            if n == 0 {
                break;
            }
        }
        let index: Vec<String> = elements
            .iter()
            .rev()
            .enumerate()
            .map(|(i, e)| {
                if i + 1 == elements.len() {
                    format!("{e:03}")
                } else {
                    format!("x{e:03}")
                }
            })
            .collect();
        let mut text = format!("tile/{level}/{}", index.join("/"));
        if u64::from(self.width) < TILE_WIDTH {
            text.push_str(&format!(".p/{}", self.width));
        }
        text
    }

    fn level(&self) -> u8 {
        match self.kind {
            TileKind::Hashes(l) => l,
            TileKind::Entries => 0,
        }
    }

    /// The leaves each hash of the tile spans, 256^level, if that fits in a u64.
    fn span(&self) -> Option<u64> {
        TILE_WIDTH.checked_pow(u32::from(self.level()))
    }

    /// The entries [start, end) the tile covers, if a u64 holds them.
    pub fn leaves(&self) -> Option<(u64, u64)> {
        let span = self.span()?;
        let first = self.index.checked_mul(TILE_WIDTH)?;
        let start = first.checked_mul(span)?;
        let end = first
            .checked_add(u64::from(self.width))?
            .checked_mul(span)?;
        Some((start, end))
    }

    /// Whether a tree of `size` leaves has this tile: every hash it holds is over
    /// leaves the tree has. (The partial tile a checkpoint of `size` needs is the one
    /// of width floor(size / 256^l) mod 256; a narrower one is a partial tile of an
    /// earlier size, and stays served.)
    pub fn exists_in(&self, size: u64) -> bool {
        self.leaves().is_some_and(|(_, end)| end <= size)
    }
}

impl MerkleTree {
    /// The bytes of a hash tile (32 bytes a hash), or `None` where the tree of `size`
    /// leaves (at most the tree's length) does not have it.
    pub fn tile(
        &self,
        tile: &TilePath,
        size: u64,
        source: &mut LeafSource,
    ) -> Result<Option<Vec<u8>>, Unreadable> {
        if tile.kind == TileKind::Entries || size > self.len() || !tile.exists_in(size) {
            return Ok(None);
        }
        let (start, _) = tile.leaves().expect("exists_in checked it");
        let span = tile.span().expect("exists_in checked it");
        let mut bytes = Vec::with_capacity(usize::from(tile.width) * 32);
        for hash in self.hashes(start, span, usize::from(tile.width), source)? {
            bytes.extend_from_slice(&hash);
        }
        Ok(Some(bytes))
    }
}

/// An entry bundle: each entry as its length (big-endian u16) then its bytes.
pub fn entry_bundle<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for entry in entries {
        let length = u16::try_from(entry.len()).map_err(|_| {
            format!(
                "an entry of {} bytes exceeds an entry bundle's {MAX_ENTRY_BYTES}",
                entry.len()
            )
        })?;
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(entry);
    }
    Ok(out)
}

/// Reads an entry bundle back into its entries.
pub fn read_entry_bundle(mut bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut entries = Vec::new();
    while !bytes.is_empty() {
        let [a, b, rest @ ..] = bytes else {
            return Err("an entry bundle ends inside a length".into());
        };
        let length = usize::from(u16::from_be_bytes([*a, *b]));
        if rest.len() < length {
            return Err(format!(
                "an entry of {length} bytes runs past the bundle's end"
            ));
        }
        entries.push(&rest[..length]);
        bytes = &rest[length..];
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_and_write_as_the_spec_shows() {
        let t = TilePath::parse("tile/0/x001/x234/067").unwrap();
        assert_eq!(
            t,
            TilePath {
                kind: TileKind::Hashes(0),
                index: 1_234_067,
                width: 256
            }
        );
        assert_eq!(t.path(), "tile/0/x001/x234/067");
        let p = TilePath::parse("tile/entries/005.p/12").unwrap();
        assert_eq!((p.kind, p.index, p.width), (TileKind::Entries, 5, 12));
        assert_eq!(p.path(), "tile/entries/005.p/12");
        for bad in [
            "tile/0/5",
            "tile/00/005",
            "tile/64/005",
            "tile/0/x000/005",
            "tile/0/001/005",
            "tile/0/005.p/0",
            "tile/0/005.p/256",
            "tile/0/005.p/012",
            "tile/0/x999/x999/x999/x999/x999/x999/x999/999",
            "tiles/0/005",
        ] {
            assert!(TilePath::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn a_tree_of_70000_has_the_tiles_the_spec_lists() {
        let size = 70_000;
        let full = |l, n| TilePath {
            kind: TileKind::Hashes(l),
            index: n,
            width: 256,
        };
        let partial = |l, n, w| TilePath {
            kind: TileKind::Hashes(l),
            index: n,
            width: w,
        };
        assert!(full(0, 272).exists_in(size));
        assert!(!full(0, 273).exists_in(size));
        assert!(partial(0, 273, 112).exists_in(size));
        assert!(!partial(0, 273, 113).exists_in(size));
        assert!(full(1, 0).exists_in(size));
        assert!(partial(1, 1, 17).exists_in(size));
        assert!(!partial(1, 1, 18).exists_in(size));
        assert!(partial(2, 0, 1).exists_in(size));
        assert!(!partial(3, 0, 1).exists_in(size));
        assert!(!full(63, u64::MAX / 256).exists_in(u64::MAX));
    }

    #[test]
    fn entry_bundles_round_trip_and_refuse_oversized_entries() {
        let entries: [&[u8]; 3] = [b"a", b"", &[7u8; 300]];
        let bundle = entry_bundle(entries).unwrap();
        assert_eq!(&bundle[..3], &[0, 1, b'a']);
        assert_eq!(read_entry_bundle(&bundle).unwrap(), entries.to_vec());
        assert!(entry_bundle([&[0u8; MAX_ENTRY_BYTES][..]]).is_ok());
        assert!(entry_bundle([&[0u8; MAX_ENTRY_BYTES + 1][..]]).is_err());
        assert!(read_entry_bundle(&[0, 5, 1]).is_err());
        assert!(read_entry_bundle(&[0]).is_err());
    }
}
