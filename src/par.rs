//! Work split over CPU threads: contiguous blocks of indices, or of a buffer's rows, one scoped
//! thread per block, results in index order. The CPU twins that run on the backend's threads
//! (softmax-KL, the teacher mix, the relation losses, the int8 product, the bf16 packing) and the
//! teacher cache's top-k use it; each caller keeps its sums in row order after the split, so its
//! results are the same bits on any number of threads.
//!
//! With one thread, or one block, everything runs on the calling thread (no spawn). A panic on a
//! worker is re-raised on the caller (a bug, not an input error: the callers check their inputs
//! before they split).

/// `f(i)` for every `i < n`, in order of `i`, on up to `threads` threads (contiguous blocks).
pub fn map<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let t = threads.clamp(1, n.max(1));
    if t == 1 {
        return (0..n).map(f).collect();
    }
    let chunk = n.div_ceil(t);
    let f = &f;
    std::thread::scope(|s| {
        let parts: Vec<_> = (0..t).map(|c| s.spawn(move || (c * chunk..((c + 1) * chunk).min(n)).map(f).collect::<Vec<T>>())).collect();
        parts.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    })
}

/// `f(first, block)` for contiguous blocks of whole rows of `buf` (rows of `width` elements; a
/// trailing part shorter than a row is left alone), `first` the index of the block's first row;
/// up to `threads` blocks of at least `min_rows` rows each (fewer blocks where the rows are few).
/// Returns `f`'s results in block order. An empty `buf` (or `width` 0) is one call `f(0, &mut [])`.
pub fn blocks<T: Send, R: Send>(buf: &mut [T], width: usize, threads: usize, min_rows: usize, f: impl Fn(usize, &mut [T]) -> R + Sync) -> Vec<R> {
    let rows = buf.len().checked_div(width).unwrap_or(0);
    let buf = &mut buf[..rows * width];
    let per = rows.div_ceil(threads.max(1)).max(min_rows).max(1);
    if rows <= per {
        return vec![f(0, buf)];
    }
    let f = &f;
    std::thread::scope(|s| {
        let parts: Vec<_> = buf.chunks_mut(per * width).enumerate().map(|(b, block)| s.spawn(move || f(b * per, block))).collect();
        parts.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    })
}

/// `f(i, row)` for every row of `buf` (rows of `width`), on up to `threads` threads (blocks of rows).
pub fn rows<T: Send>(buf: &mut [T], width: usize, threads: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    blocks(buf, width, threads, 1, |first, block| {
        for (i, row) in block.chunks_exact_mut(width).enumerate() {
            f(first + i, row);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_keeps_the_order_on_any_number_of_threads() {
        for n in [0, 1, 7, 64, 1000] {
            for t in [0, 1, 2, 3, 8, 2000] {
                assert_eq!(map(n, t, |i| i * i), (0..n).map(|i| i * i).collect::<Vec<_>>(), "n {n} threads {t}");
            }
        }
    }

    #[test]
    fn blocks_cover_every_row_once_in_order() {
        for (rows, width, t, min) in [(0, 3, 4, 1), (1, 5, 4, 1), (10, 3, 3, 1), (10, 3, 3, 4), (100, 7, 8, 16), (9, 2, 20, 1), (5, 0, 2, 1)] {
            let mut buf = vec![0usize; rows * width + 1]; // one element past the last row: never touched
            let rows = if width == 0 { 0 } else { rows };
            let firsts = blocks(&mut buf, width, t, min, |first, block| {
                for (i, row) in block.chunks_mut(width.max(1)).enumerate() {
                    row.iter_mut().for_each(|v| *v += first + i + 1);
                }
                (first, block.len() / width.max(1))
            });
            for r in 0..rows {
                assert!(buf[r * width..(r + 1) * width].iter().all(|&v| v == r + 1), "rows {rows} width {width} threads {t}: row {r}");
            }
            assert_eq!(buf[rows * width], 0);
            assert!(firsts.len() <= t.max(1), "{} blocks on {t} threads", firsts.len());
            let mut next = 0;
            for &(first, len) in &firsts {
                assert_eq!(first, next);
                assert!(len >= min.min(rows) || first + len == rows, "a block of {len} rows under the minimum {min}");
                next += len;
            }
            assert_eq!(next, rows);
        }
    }

    #[test]
    fn rows_sees_each_row_with_its_index() {
        let mut buf = vec![0u32; 13 * 4];
        rows(&mut buf, 4, 3, |i, row| row.iter_mut().enumerate().for_each(|(j, v)| *v = (i * 10 + j) as u32));
        for i in 0..13 {
            assert_eq!(&buf[i * 4..(i + 1) * 4], &[(i * 10) as u32, (i * 10 + 1) as u32, (i * 10 + 2) as u32, (i * 10 + 3) as u32]);
        }
    }

    #[test]
    #[should_panic(expected = "planted")]
    fn a_worker_panic_reaches_the_caller() {
        map(8, 4, |i| if i == 6 { panic!("planted") } else { i });
    }
}
