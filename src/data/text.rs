//! Text corpora for the language model: a vocabulary built from the training file, tokenization
//! with errors that name the file and line, and a memory-mapped token cache that is built once and
//! reused while the corpus file is unchanged (same path, size and modification time).
//!
//! Word level (default): whitespace-separated words; words seen fewer than `min_count` times in the
//! training file become `<unk>`; each non-blank line ends with `<eos>`. Byte level: every byte is a
//! token (256 of them), for raw text in any language or encoding.

use crate::hash::Hasher64;
use crate::{bail, Error, Result};
use memmap2::Mmap;
use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub const UNK: &str = "<unk>";
pub const EOS: &str = "<eos>";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tokenizer {
    Word,
    Byte,
}

impl FromStr for Tokenizer {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "word" => Ok(Tokenizer::Word),
            "byte" => Ok(Tokenizer::Byte),
            _ => Err(format!("tokenizer must be word or byte, got {s:?}")),
        }
    }
}

impl fmt::Display for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tokenizer::Word => "word",
            Tokenizer::Byte => "byte",
        })
    }
}

/// Token strings by id, and ids by string.
#[derive(Clone, Debug, PartialEq)]
pub struct Vocab {
    pub tokenizer: Tokenizer,
    pub words: Vec<String>,
    index: HashMap<String, u32>,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::io(path, e))
}

/// Lines of a file as UTF-8 (CR before LF dropped); invalid UTF-8 is an error naming the line.
fn utf8_lines<'a>(path: &'a Path, bytes: &'a [u8]) -> impl Iterator<Item = Result<&'a str>> + 'a {
    // A UTF-8 byte-order mark at the start of the file is not text.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    bytes.split(|&b| b == b'\n').enumerate().map(move |(i, line)| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        std::str::from_utf8(line).map_err(|e| Error::Data {
            path: path.to_path_buf(),
            line: i + 1,
            field: "text".into(),
            message: format!("invalid UTF-8 at byte {} of the line (use --tokenizer byte for non-UTF-8 text)", e.valid_up_to()),
        })
    })
}

impl Vocab {
    fn from_words(tokenizer: Tokenizer, words: Vec<String>) -> Vocab {
        let index = words.iter().enumerate().map(|(i, w)| (w.clone(), i as u32)).collect();
        Vocab { tokenizer, words, index }
    }

    /// Build from a training file. Word order: `<unk>`, `<eos>`, then by descending count (ties by
    /// string), so the vocabulary is a deterministic function of the file.
    pub fn build(path: &Path, tokenizer: Tokenizer, min_count: usize) -> Result<Vocab> {
        if tokenizer == Tokenizer::Byte {
            return Ok(Vocab::from_words(Tokenizer::Byte, (0..256).map(|b| format!("<0x{b:02X}>")).collect()));
        }
        let bytes = read(path)?;
        let mut counts: HashMap<&str, usize> = HashMap::new();
        let bar = crate::progress::bar(bytes.len() as u64, 0, "building the vocabulary (bytes) ");
        let mut seen = 0u64;
        for (i, line) in utf8_lines(path, &bytes).enumerate() {
            let line = line?;
            seen += line.len() as u64 + 1;
            if i % 65_536 == 0 {
                bar.set_position(seen);
            }
            for w in line.split_whitespace() {
                *counts.entry(w).or_default() += 1;
            }
        }
        bar.finish_and_clear();
        if counts.is_empty() {
            bail!(Invalid, "{}: the corpus contains no words", path.display());
        }
        let mut kept: Vec<(&str, usize)> = counts.into_iter().filter(|&(w, c)| c >= min_count && w != UNK && w != EOS).collect();
        kept.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut words = vec![UNK.to_string(), EOS.to_string()];
        words.extend(kept.into_iter().map(|(w, _)| w.to_string()));
        Ok(Vocab::from_words(Tokenizer::Word, words))
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Serialised form (tokenizer on the first line, then one token per line), stored in checkpoints.
    /// The id of `<unk>`, where the vocabulary has one (not at byte level).
    pub fn unk_id(&self) -> Option<u32> {
        self.index.get(UNK).copied()
    }

    pub fn to_text(&self) -> String {
        let mut s = format!("{}\n", self.tokenizer);
        for w in &self.words {
            s.push_str(w);
            s.push('\n');
        }
        s
    }

    pub fn from_text(text: &str) -> Result<Vocab> {
        let mut lines = text.lines();
        let tok = lines.next().ok_or_else(|| Error::Invalid("empty vocabulary text".into()))?;
        let tokenizer = Tokenizer::from_str(tok).map_err(Error::Invalid)?;
        Ok(Vocab::from_words(tokenizer, lines.map(str::to_string).collect()))
    }

    /// A hash that changes whenever the vocabulary does.
    pub fn fingerprint(&self) -> u64 {
        crate::hash::hash64(self.to_text().as_bytes())
    }

    /// Token ids of a piece of text (a prompt): whitespace words, unknown ones as `<unk>`, with
    /// `<eos>` after each line but the last; or its bytes.
    pub fn encode_text(&self, text: &str) -> Vec<u32> {
        match self.tokenizer {
            Tokenizer::Byte => text.bytes().map(u32::from).collect(),
            Tokenizer::Word => {
                let (unk, eos) = (self.index[UNK], self.index[EOS]);
                let mut ids = Vec::new();
                for (i, line) in text.lines().enumerate() {
                    if i > 0 {
                        ids.push(eos);
                    }
                    ids.extend(line.split_whitespace().map(|w| *self.index.get(w).unwrap_or(&unk)));
                }
                ids
            }
        }
    }

    /// Token ids of a whole file.
    pub fn encode_file(&self, path: &Path) -> Result<Vec<u32>> {
        let bytes = read(path)?;
        let ids: Vec<u32> = match self.tokenizer {
            Tokenizer::Byte => bytes.iter().map(|&b| b as u32).collect(),
            Tokenizer::Word => {
                let (unk, eos) = (self.index[UNK], self.index[EOS]);
                let mut ids = Vec::with_capacity(bytes.len() / 5);
                for line in utf8_lines(path, &bytes) {
                    let before = ids.len();
                    ids.extend(line?.split_whitespace().map(|w| *self.index.get(w).unwrap_or(&unk)));
                    if ids.len() > before {
                        ids.push(eos);
                    }
                }
                ids
            }
        };
        if ids.is_empty() {
            bail!(Invalid, "{}: the file contains no tokens", path.display());
        }
        Ok(ids)
    }
}

/// Tokens of a file, memory-mapped from the cache.
pub struct Tokens {
    map: Mmap,
    pub path: PathBuf,
}

impl Tokens {
    pub fn as_slice(&self) -> &[u32] {
        bytemuck::cast_slice(&self.map[..])
    }

    pub fn len(&self) -> usize {
        self.map.len() / 4
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Identity of a file for the caches: the xxh3-64 hash of its content, streamed (so a file changed
/// in place, even with its size and modification time kept, as `cp -p` or `touch -r` leave them, is
/// never read from the cache of its old content; the cost is one read of the file).
pub(crate) fn file_key(path: &Path) -> Result<u64> {
    use std::io::Read;
    let mut f = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.digest())
}

/// Write bytes to `path` through a temporary name (`write_temp_name`) and a rename, so no reader
/// sees half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = write_temp_name(path);
    let mut f = fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// The temporary name `write_atomic` writes `path` under first: its extension replaced by
/// `tmp<pid>`.
pub fn write_temp_name(path: &Path) -> PathBuf {
    path.with_extension(format!("tmp{}", std::process::id()))
}

/// Whether `path` is such a temporary name (`<stem>.tmp<digits>`): what a process killed in
/// `write_atomic` leaves behind.
pub fn is_write_temp(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).and_then(|e| e.strip_prefix("tmp")).is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// The vocabulary of a training file, from the cache when the file is unchanged.
pub fn cached_vocab(train: &Path, tokenizer: Tokenizer, min_count: usize, cache: &Path) -> Result<Vocab> {
    let mut h = Hasher64::new();
    h.update(&file_key(train)?.to_le_bytes());
    h.update(format!("{tokenizer}/{min_count}").as_bytes());
    let path = cache.join(format!("vocab-{:016x}.txt", h.finish()));
    if let Ok(text) = fs::read_to_string(&path) {
        if let Ok(v) = Vocab::from_text(&text) {
            return Ok(v);
        }
    }
    let v = Vocab::build(train, tokenizer, min_count)?;
    write_atomic(&path, v.to_text().as_bytes())?;
    Ok(v)
}

/// The tokens of `file` under `vocab`, memory-mapped; encoded and cached on first use.
pub fn cached_tokens(file: &Path, vocab: &Vocab, cache: &Path) -> Result<Tokens> {
    let mut h = Hasher64::new();
    h.update(&file_key(file)?.to_le_bytes());
    h.update(&vocab.fingerprint().to_le_bytes());
    let path = cache.join(format!("tokens-{:016x}.u32", h.finish()));
    if !path.exists() {
        let ids = vocab.encode_file(file)?;
        write_atomic(&path, bytemuck::cast_slice(&ids))?;
    }
    let f = fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    // SAFETY: the cache file is written once through a rename and never modified in place.
    let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(&path, e))?;
    if map.is_empty() || map.len() % 4 != 0 {
        bail!(Invalid, "{}: corrupt token cache (size {}); delete it to rebuild", path.display(), map.len());
    }
    Ok(Tokens { map, path: file.to_path_buf() })
}

/// Shard `i` of `n`: contiguous, disjoint, covering the stream (the last shard takes the remainder).
pub fn shard(tokens: &[u32], n: usize, i: usize) -> Result<&[u32]> {
    if n == 0 || i >= n {
        bail!(Invalid, "shard {i} of {n} does not exist");
    }
    if tokens.len() < n {
        bail!(Invalid, "{} token(s) cannot be dealt into {n} shards: every shard needs at least one token", tokens.len());
    }
    let per = tokens.len() / n;
    let end = if i + 1 == n { tokens.len() } else { (i + 1) * per };
    Ok(&tokens[i * per..end])
}

/// Shard `i` of `n`, disjoint and covering the stream. `block` 0 cuts the stream into `n`
/// contiguous pieces ([`shard`]); `block` > 0 deals it out in blocks of `block` tokens, block `b`
/// to shard `b mod n`, so that every shard samples the whole corpus (a corpus ordered by genre, as
/// Brown is, is then not split by genre; the paper's shards are random partitions).
pub fn shard_blocks(tokens: &[u32], n: usize, i: usize, block: usize) -> Result<std::borrow::Cow<'_, [u32]>> {
    if block == 0 || n == 1 {
        return shard(tokens, n, i).map(std::borrow::Cow::Borrowed);
    }
    if i >= n {
        bail!(Invalid, "shard {i} of {n} does not exist");
    }
    Ok(std::borrow::Cow::Owned(tokens.chunks(block).skip(i).step_by(n).flatten().copied().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> crate::testdir::Scratch {
        crate::testdir::Scratch::new("text", name)
    }

    #[test]
    fn min_count_maps_rare_words_to_unk_and_lines_end_with_eos() {
        let d = tmpdir("vocab");
        let f = d.join("train.txt");
        fs::write(&f, "a a a b\r\na c\n\nb a\n").unwrap();
        let v = Vocab::build(&f, Tokenizer::Word, 2).unwrap();
        assert_eq!(v.words, vec!["<unk>", "<eos>", "a", "b"]);
        assert_eq!(v.encode_file(&f).unwrap(), vec![2, 2, 2, 3, 1, 2, 0, 1, 3, 2, 1]);
        assert_eq!(Vocab::from_text(&v.to_text()).unwrap(), v);
        // A byte-order mark at the start of a file is not part of its first word.
        let g = d.join("bom.txt");
        fs::write(&g, "\u{feff}a a a b\r\na c\n\nb a\n").unwrap();
        assert_eq!(Vocab::build(&g, Tokenizer::Word, 2).unwrap().words, v.words);
        assert_eq!(v.encode_file(&g).unwrap(), v.encode_file(&f).unwrap());
    }

    #[test]
    fn block_shards_are_disjoint_cover_the_stream_and_keep_block_order() {
        let t: Vec<u32> = (0..103).collect();
        let parts: Vec<Vec<u32>> = (0..3).map(|i| shard_blocks(&t, 3, i, 10).unwrap().into_owned()).collect();
        assert_eq!(&parts[0][..12], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 30, 31]);
        assert_eq!(&parts[1][..11], &[10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 40]);
        assert_eq!(*parts[1].last().unwrap(), 102, "the short last block (block 10) goes to shard 10 mod 3 = 1");
        let mut all: Vec<u32> = parts.concat();
        all.sort_unstable();
        assert_eq!(all, t);
        assert_eq!(shard_blocks(&t, 3, 1, 0).unwrap().as_ref(), shard(&t, 3, 1).unwrap());
        assert!(shard_blocks(&t, 3, 3, 10).is_err());
    }

    #[test]
    fn shards_are_disjoint_and_cover_the_stream() {
        let t: Vec<u32> = (0..10).collect();
        let parts: Vec<&[u32]> = (0..3).map(|i| shard(&t, 3, i).unwrap()).collect();
        assert_eq!(parts.concat(), t);
        assert_eq!(parts[0], &[0, 1, 2]);
        assert!(shard(&t, 3, 3).is_err());
    }

    #[test]
    fn cache_is_reused_and_rebuilt_when_the_file_changes() {
        let d = tmpdir("cache");
        let f = d.join("t.txt");
        fs::write(&f, "x y\n").unwrap();
        let v = cached_vocab(&f, Tokenizer::Word, 1, &d.join("c")).unwrap();
        assert_eq!(cached_tokens(&f, &v, &d.join("c")).unwrap().as_slice(), &[2, 3, 1]);
        // Reused, not rebuilt: a second call reads the cache files (marked here: the token cache
        // holds other ids, the vocabulary cache another word), and writes no new ones.
        let files = |ext: &str| -> Vec<std::path::PathBuf> {
            let mut v: Vec<_> = fs::read_dir(d.join("c")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == ext)).collect();
            v.sort();
            v
        };
        let (toks, vocabs) = (files("u32"), files("txt"));
        assert_eq!((toks.len(), vocabs.len()), (1, 1));
        fs::write(&toks[0], bytemuck::cast_slice(&[3u32, 3, 2])).unwrap();
        fs::write(&vocabs[0], fs::read_to_string(&vocabs[0]).unwrap().replace('y', "marked")).unwrap();
        let again = cached_vocab(&f, Tokenizer::Word, 1, &d.join("c")).unwrap();
        assert!(again.to_text().contains("marked"), "the vocabulary was rebuilt, not read from its cache");
        assert_eq!(cached_tokens(&f, &v, &d.join("c")).unwrap().as_slice(), &[3, 3, 2], "the tokens were encoded again, not read from their cache");
        assert_eq!((files("u32"), files("txt")), (toks, vocabs));
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&f, "x y y\n").unwrap();
        let v2 = cached_vocab(&f, Tokenizer::Word, 1, &d.join("c")).unwrap();
        assert_eq!(cached_tokens(&f, &v2, &d.join("c")).unwrap().len(), 4);
        // Changed in place with its size and modification time kept (as `cp -p` or `touch -r`
        // leave a file): the content is the key, so the new words are read.
        let mtime = fs::metadata(&f).unwrap().modified().unwrap();
        fs::write(&f, "y x x\n").unwrap();
        fs::File::options().write(true).open(&f).unwrap().set_modified(mtime).unwrap();
        assert_eq!(fs::metadata(&f).unwrap().modified().unwrap(), mtime);
        let now = v2.encode_file(&f).unwrap();
        assert_ne!(now.as_slice(), &[3, 2, 2, 1], "the rewrite did not change the tokens");
        assert_eq!(cached_tokens(&f, &v2, &d.join("c")).unwrap().as_slice(), now.as_slice(), "a file changed in place was read from the old cache");
    }

    #[test]
    fn byte_level_takes_any_bytes() {
        let d = tmpdir("bytes");
        let f = d.join("b.txt");
        fs::write(&f, [0xffu8, 0x00, b'\n']).unwrap();
        let v = Vocab::build(&f, Tokenizer::Byte, 1).unwrap();
        assert_eq!(v.len(), 256);
        assert_eq!(v.encode_file(&f).unwrap(), vec![255, 0, 10]);
    }
}
