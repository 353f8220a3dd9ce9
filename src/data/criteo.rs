//! The Criteo Display Advertising Challenge format: one impression per line, 40 tab-separated
//! fields: the label (0 or 1), I1-I13 integer counts, C1-C26 categories as 32-bit hex; an empty
//! field is missing. Files may be gzip-compressed and of any size (read as a stream).
//!
//! Preprocessing turns each row into a fixed 164-byte record in a memory-mapped cache, so epochs
//! after the first read no text:
//! - integer x: `sign(x) * ln(1 + |x|)` (the usual log transform; I2 holds negatives), and a
//!   separate missing flag, so that "missing" is its own signal rather than a fake zero;
//! - category c of field f: `hash(f, c) mod buckets` (the hashing trick, per field); a missing
//!   category hashes like a value of its own.

use crate::data::text::{file_key, write_atomic};
use crate::hash::Hasher64;
use crate::{bail, Error, Result};
use memmap2::Mmap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub const NUM_INTS: usize = 13;
pub const NUM_CATS: usize = 26;
pub const NUM_FIELDS: usize = 1 + NUM_INTS + NUM_CATS;
/// Dense inputs per row: 13 transformed integers and 13 missing flags.
pub const DENSE_WIDTH: usize = 2 * NUM_INTS;
const RECORD_WORDS: usize = 1 + NUM_INTS + 1 + NUM_CATS;
const RECORD_BYTES: usize = RECORD_WORDS * 4;
const CACHE_VERSION: &str = "criteo-cache-v1";

/// One parsed impression, losslessly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub label: bool,
    pub ints: [Option<i64>; NUM_INTS],
    pub cats: [Option<u32>; NUM_CATS],
}

/// The name of a 1-based column: label, I1..I13, C1..C26.
pub fn column_name(col: usize) -> String {
    match col {
        1 => "label".into(),
        c if c <= 1 + NUM_INTS => format!("I{}", c - 1),
        c if c <= NUM_FIELDS => format!("C{}", c - 1 - NUM_INTS),
        _ => "extra".into(),
    }
}

/// A bad field: 1-based column and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub column: usize,
    pub message: String,
}

impl Row {
    /// Parse one line (without its newline; a trailing CR is allowed).
    pub fn parse(line: &[u8]) -> std::result::Result<Row, FieldError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let n = line.split(|&b| b == b'\t').count();
        if n != NUM_FIELDS {
            // Name the first missing column, or the first extra one.
            let column = if n < NUM_FIELDS { n + 1 } else { NUM_FIELDS + 1 };
            return Err(FieldError { column, message: format!("expected {NUM_FIELDS} tab-separated fields, found {n}") });
        }
        let mut row = Row { label: false, ints: [None; NUM_INTS], cats: [None; NUM_CATS] };
        for (i, f) in line.split(|&b| b == b'\t').enumerate() {
            let col = i + 1;
            let text = || String::from_utf8_lossy(f).into_owned();
            match i {
                0 => {
                    row.label = match f {
                        b"0" => false,
                        b"1" => true,
                        _ => return Err(FieldError { column: col, message: format!("label must be 0 or 1, got {:?}", text()) }),
                    }
                }
                i if i <= NUM_INTS => {
                    if !f.is_empty() {
                        use std::num::IntErrorKind::{NegOverflow, PosOverflow};
                        let v = match std::str::from_utf8(f).map(|s| s.parse::<i64>()) {
                            Ok(Ok(v)) => v,
                            Ok(Err(e)) if matches!(e.kind(), PosOverflow | NegOverflow) => {
                                let message = format!(
                                    "{:?} is out of range: an integer feature must fit in 64 bits (-9223372036854775808 to 9223372036854775807)",
                                    text()
                                );
                                return Err(FieldError { column: col, message });
                            }
                            _ => return Err(FieldError { column: col, message: format!("{:?} is not an integer", text()) }),
                        };
                        row.ints[i - 1] = Some(v);
                    }
                }
                i => {
                    if !f.is_empty() {
                        let ok = f.len() <= 8 && f.iter().all(u8::is_ascii_hexdigit);
                        let v = if ok { u32::from_str_radix(std::str::from_utf8(f).unwrap(), 16).ok() } else { None };
                        row.cats[i - 1 - NUM_INTS] =
                            Some(v.ok_or_else(|| FieldError { column: col, message: format!("{:?} is not a 32-bit hex category", text()) })?);
                    }
                }
            }
        }
        Ok(row)
    }

    /// The TSV line of this row (categories as 8 lowercase hex digits, as in the challenge data).
    pub fn to_line(&self) -> String {
        let mut s = String::with_capacity(200);
        s.push(if self.label { '1' } else { '0' });
        for v in &self.ints {
            s.push('\t');
            if let Some(x) = v {
                s.push_str(&x.to_string());
            }
        }
        for c in &self.cats {
            s.push('\t');
            if let Some(x) = c {
                s.push_str(&format!("{x:08x}"));
            }
        }
        s
    }
}

/// What to do with a bad line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnBadLine {
    /// Stop at the first, with an error naming file, line and column.
    Stop,
    /// Skip it, count it, and report the count (and the first few) at the end.
    Skip,
}

impl FromStr for OnBadLine {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "stop" => Ok(OnBadLine::Stop),
            "skip" => Ok(OnBadLine::Skip),
            _ => Err(format!("on_bad_line must be stop or skip, got {s:?}")),
        }
    }
}

impl std::fmt::Display for OnBadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OnBadLine::Stop => "stop",
            OnBadLine::Skip => "skip",
        })
    }
}

/// Counts from reading a file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadStats {
    pub rows: usize,
    pub skipped: usize,
    /// The first few skipped lines' errors, for the report.
    pub examples: Vec<String>,
}

fn data_error(path: &Path, line: usize, e: FieldError) -> Error {
    Error::Data { path: path.to_path_buf(), line, field: format!("column {} ({})", e.column, column_name(e.column)), message: e.message }
}

/// Open a file, decompressing when it starts with the gzip magic bytes.
fn open_stream(path: &Path) -> Result<Box<dyn BufRead>> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(|e| Error::io(path, e))?;
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(BufReader::with_capacity(1 << 20, flate2::read::MultiGzDecoder::new(f)))
    } else {
        Box::new(BufReader::with_capacity(1 << 20, f))
    })
}

/// Stream every row of a file (plain or gzip) to `f`.
pub fn read_rows(path: &Path, on_bad: OnBadLine, mut f: impl FnMut(Row) -> Result<()>) -> Result<ReadStats> {
    let mut r = open_stream(path)?;
    let mut stats = ReadStats::default();
    let mut buf = Vec::with_capacity(512);
    let mut line = 0usize;
    loop {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf).map_err(|e| Error::Data {
            path: path.to_path_buf(),
            line: line + 1,
            field: "file".into(),
            message: format!("read failed: {e} (a truncated or corrupt gzip file?)"),
        })?;
        if n == 0 {
            break;
        }
        line += 1;
        let mut text = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if line == 1 {
            // A UTF-8 byte-order mark (spreadsheet exports write one) is not part of the label.
            text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
        }
        match Row::parse(text) {
            Ok(row) => {
                stats.rows += 1;
                f(row)?;
            }
            Err(e) => match on_bad {
                OnBadLine::Stop => return Err(data_error(path, line, e)),
                OnBadLine::Skip => {
                    stats.skipped += 1;
                    if stats.examples.len() < 5 {
                        stats.examples.push(data_error(path, line, e).to_string());
                    }
                }
            },
        }
    }
    if stats.rows == 0 {
        bail!(Invalid, "{}: no valid rows ({} lines skipped)", path.display(), stats.skipped);
    }
    Ok(stats)
}

/// `sign(x) * ln(1 + |x|)`.
pub fn transform_int(x: i64) -> f32 {
    let a = (x.unsigned_abs() as f64).ln_1p() as f32;
    if x < 0 {
        -a
    } else {
        a
    }
}

/// The bucket of field `f`'s category (None: missing) among `buckets`.
pub fn bucket(field: usize, cat: Option<u32>, buckets: usize) -> u32 {
    let v = match cat {
        Some(c) => c as u64,
        None => 1 << 40,
    };
    let mut z = (v ^ ((field as u64 + 1) << 48)).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % buckets as u64) as u32
}

fn encode_record(row: &Row, buckets: usize, out: &mut [u32; RECORD_WORDS]) {
    out[0] = row.label as u32;
    let mut missing = 0u32;
    for (i, v) in row.ints.iter().enumerate() {
        out[1 + i] = match v {
            Some(x) => transform_int(*x).to_bits(),
            None => {
                missing |= 1 << i;
                0f32.to_bits()
            }
        };
    }
    out[1 + NUM_INTS] = missing;
    for (f, c) in row.cats.iter().enumerate() {
        out[2 + NUM_INTS + f] = bucket(f, *c, buckets);
    }
}

/// A preprocessed file: fixed records, memory-mapped.
pub struct CriteoCache {
    map: Mmap,
    pub buckets: usize,
    pub source: PathBuf,
    pub stats: ReadStats,
}

impl CriteoCache {
    pub fn rows(&self) -> usize {
        self.map.len() / RECORD_BYTES
    }

    fn record(&self, i: usize) -> &[u32] {
        let words: &[u32] = bytemuck::cast_slice(&self.map[..]);
        &words[i * RECORD_WORDS..(i + 1) * RECORD_WORDS]
    }

    /// An xxh3 fingerprint of rows `rows` as preprocessed (labels, features, buckets): what a
    /// checkpoint records of its training data, so that a resume on other data is refused.
    pub fn fingerprint(&self, rows: std::ops::Range<usize>) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.map[rows.start * RECORD_BYTES..rows.end * RECORD_BYTES])
    }

    pub fn label(&self, i: usize) -> f32 {
        self.record(i)[0] as f32
    }

    /// Row `i`'s category buckets, one per field (not offset into the model's table).
    pub fn categories(&self, i: usize) -> &[u32] {
        &self.record(i)[2 + NUM_INTS..]
    }

    /// Rows `idx` as model inputs: category ids `[N * 26]` offset per field into one table of
    /// `26 * buckets` rows, dense `[N, 26]` (13 values, 13 missing flags), labels `[N]`.
    pub fn batch(&self, idx: &[usize]) -> Result<(crate::Tensor, crate::Tensor, crate::Tensor)> {
        let n = idx.len();
        let (mut ids, mut dense, mut labels) = (Vec::with_capacity(n * NUM_CATS), Vec::with_capacity(n * DENSE_WIDTH), Vec::with_capacity(n));
        for &i in idx {
            let r = self.record(i);
            labels.push(r[0] as f32);
            dense.extend(r[1..1 + NUM_INTS].iter().map(|&b| f32::from_bits(b)));
            let missing = r[1 + NUM_INTS];
            dense.extend((0..NUM_INTS).map(|k| ((missing >> k) & 1) as f32));
            ids.extend(r[2 + NUM_INTS..].iter().enumerate().map(|(f, &b)| (f * self.buckets) as i32 + b as i32));
        }
        Ok((crate::Tensor::from_i32(ids, &[n * NUM_CATS])?, crate::Tensor::from_f32(dense, &[n, DENSE_WIDTH])?, crate::Tensor::from_f32(labels, &[n])?))
    }
}

/// The preprocessed records of `path`, built on first use (streaming, then renamed into place)
/// and memory-mapped. Returns the cache and whether it was built now.
pub fn cached(path: &Path, buckets: usize, on_bad: OnBadLine, cache_dir: &Path) -> Result<(CriteoCache, bool)> {
    if buckets == 0 || buckets > i32::MAX as usize / NUM_CATS {
        bail!(Invalid, "buckets must be in 1..={}, got {buckets}", i32::MAX as usize / NUM_CATS);
    }
    let mut h = Hasher64::new();
    h.update(&file_key(path)?.to_le_bytes());
    h.update(format!("{CACHE_VERSION}/{buckets}/{on_bad}").as_bytes());
    let key = h.finish();
    let bin = cache_dir.join(format!("criteo-{key:016x}.bin"));
    let stats_path = cache_dir.join(format!("criteo-{key:016x}.stats"));
    let mut built = false;
    let stats = match (bin.exists(), std::fs::read_to_string(&stats_path)) {
        (true, Ok(s)) => {
            let v: Vec<usize> = s.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            ReadStats { rows: v.first().copied().unwrap_or(0), skipped: v.get(1).copied().unwrap_or(0), examples: Vec::new() }
        }
        _ => {
            std::fs::create_dir_all(cache_dir).map_err(|e| Error::io(cache_dir, e))?;
            let tmp = crate::data::text::write_temp_name(&bin);
            let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
            let mut w = BufWriter::with_capacity(1 << 20, file);
            let mut rec = [0u32; RECORD_WORDS];
            // A line on stderr every 10 s while a large file is preprocessed (minutes for a real log).
            let (t0, mut said, mut n) = (std::time::Instant::now(), 0u64, 0u64);
            let stats = read_rows(path, on_bad, |row| {
                encode_record(&row, buckets, &mut rec);
                n += 1;
                if n.is_multiple_of(65_536) && t0.elapsed().as_secs() >= said + 10 {
                    said = t0.elapsed().as_secs();
                    eprintln!("preprocessing {}: {n} rows so far ({:.0} rows/s)", path.display(), n as f64 / t0.elapsed().as_secs_f64());
                }
                w.write_all(bytemuck::cast_slice(&rec)).map_err(|e| Error::io(&tmp, e))
            });
            let stats = match stats {
                Ok(s) => s,
                Err(e) => {
                    drop(w);
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            };
            let file = w.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
            file.sync_all().map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, &bin).map_err(|e| Error::io(&bin, e))?;
            write_atomic(&stats_path, format!("{} {}\n", stats.rows, stats.skipped).as_bytes())?;
            built = true;
            stats
        }
    };
    let f = File::open(&bin).map_err(|e| Error::io(&bin, e))?;
    // SAFETY: the cache file is complete (renamed into place) and never modified afterwards.
    let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(&bin, e))?;
    if map.len() % RECORD_BYTES != 0 || map.is_empty() {
        bail!(Invalid, "{}: corrupt cache (size {}); delete it to rebuild", bin.display(), map.len());
    }
    Ok((CriteoCache { map, buckets, source: path.to_path_buf(), stats }, built))
}

/// Row range of shard `i` of `n`: contiguous and disjoint.
pub fn shard_range(rows: usize, n: usize, i: usize) -> Result<std::ops::Range<usize>> {
    if n == 0 || i >= n {
        bail!(Invalid, "shard {i} of {n} does not exist");
    }
    if rows < n {
        bail!(
            Invalid,
            "{rows} row(s) cannot be dealt into {n} shards: every shard needs at least one row (the last would get them all, overlapping the others)"
        );
    }
    let per = rows / n;
    Ok(i * per..if i + 1 == n { rows } else { (i + 1) * per })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(label: &str) -> String {
        let mut f = vec![label.to_string()];
        f.extend((0..NUM_INTS).map(|i| if i % 4 == 0 { String::new() } else { format!("{}", i as i64 - 2) }));
        f.extend((0..NUM_CATS).map(|i| if i % 7 == 3 { String::new() } else { format!("{:08x}", i * 0x1234567) }));
        f.join("\t")
    }

    #[test]
    fn parse_round_trips_and_accepts_crlf() {
        let l = line("1");
        let r = Row::parse(l.as_bytes()).unwrap();
        assert!(r.label && r.ints[0].is_none() && r.ints[1] == Some(-1) && r.cats[3].is_none());
        assert_eq!(r.to_line(), l);
        assert_eq!(Row::parse(format!("{l}\r").as_bytes()).unwrap(), r);
    }

    #[test]
    fn a_byte_order_mark_before_the_first_label_is_skipped() {
        let d = crate::testdir::Scratch::new("criteo", "bom");
        let f = d.join("bom.tsv");
        std::fs::write(&f, format!("\u{feff}{}\n{}\n", line("1"), line("0"))).unwrap();
        let mut labels = Vec::new();
        let stats = read_rows(&f, OnBadLine::Stop, |r| {
            labels.push(r.label);
            Ok(())
        })
        .unwrap();
        assert_eq!((stats.rows, labels), (2, vec![true, false]));
    }

    #[test]
    fn each_bad_field_names_its_column() {
        let good = line("0");
        let fields: Vec<&str> = good.split('\t').collect();
        let with = |col: usize, v: &str| {
            let mut f = fields.clone();
            f[col - 1] = v;
            Row::parse(f.join("\t").as_bytes()).unwrap_err()
        };
        assert_eq!(with(1, "2").column, 1);
        assert_eq!(with(5, "3.5").column, 5);
        assert!(with(5, "3.5").message.contains("is not an integer"));
        let big = with(3, "99999999999999999999");
        assert!(big.column == 3 && big.message.contains("out of range") && big.message.contains("64 bits"), "{}", big.message);
        let e = with(20, "xyz12345");
        assert_eq!((e.column, column_name(20).as_str()), (20, "C6"));
        assert!(with(20, "123456789").message.contains("hex"));
        let short = fields[..39].join("\t");
        assert!(Row::parse(short.as_bytes()).unwrap_err().message.contains("found 39"));
    }

    /// The record cache is built once and then read, not rebuilt: the second call says it built
    /// nothing and returns what the cache file holds (a label flipped in it here shows), and
    /// another bucket count is a cache of its own.
    #[test]
    fn record_cache_is_built_once_and_then_read() {
        let d = crate::testdir::Scratch::new("criteo", "reuse");
        let f = d.join("log.tsv");
        std::fs::write(&f, format!("{}\n{}\n", line("1"), line("0"))).unwrap();
        let (c, built) = cached(&f, 64, OnBadLine::Stop, &d.join("c")).unwrap();
        assert!(built && c.rows() == 2 && c.label(0) == 1.0);
        drop(c);
        let bins: Vec<_> = std::fs::read_dir(d.join("c")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "bin")).collect();
        assert_eq!(bins.len(), 1);
        let mut bytes = std::fs::read(&bins[0]).unwrap();
        bytes[..4].copy_from_slice(&0u32.to_le_bytes()); // row 0's label
        std::fs::write(&bins[0], bytes).unwrap();
        let (c, built) = cached(&f, 64, OnBadLine::Stop, &d.join("c")).unwrap();
        assert!(!built, "the cache was rebuilt");
        assert_eq!(c.label(0), 0.0, "the records were not read from the cache");
        let (_, built) = cached(&f, 128, OnBadLine::Stop, &d.join("c")).unwrap();
        assert!(built, "another bucket count reused the 64-bucket cache");
    }

    #[test]
    fn transform_and_buckets() {
        assert_eq!(transform_int(0), 0.0);
        assert!((transform_int(-1) + 2f32.ln()).abs() < 1e-7);
        assert!(bucket(3, Some(7), 100) < 100);
        assert_ne!(bucket(3, None, 1 << 20), bucket(4, None, 1 << 20));
        assert_eq!(shard_range(10, 3, 2).unwrap(), 6..10);
        // Fewer rows than shards: refused (the last shard would get every row).
        let e = shard_range(10, 16, 15).unwrap_err().to_string();
        assert!(e.contains("10 row(s)") && e.contains("16 shards"), "{e}");
    }
}
