//! A fast, stable 64-bit hash for cache keys and checkpoint checksums (not cryptographic: it
//! detects truncation and corruption, not tampering). Eight bytes at a time, little-endian, so
//! the value is the same on every platform.

const K: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Clone, Debug)]
pub struct Hasher64 {
    state: u64,
    len: u64,
    tail: Vec<u8>,
}

impl Default for Hasher64 {
    fn default() -> Self {
        Hasher64 { state: K, len: 0, tail: Vec::new() }
    }
}

impl Hasher64 {
    pub fn new() -> Self {
        Self::default()
    }

    fn word(&mut self, w: u64) {
        self.state = mix(self.state ^ w.wrapping_mul(K)).rotate_left(17).wrapping_add(K);
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.tail.is_empty() {
            let need = 8 - self.tail.len();
            let take = need.min(data.len());
            self.tail.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.tail.len() < 8 {
                return;
            }
            let w = u64::from_le_bytes(self.tail[..8].try_into().unwrap());
            self.tail.clear();
            self.word(w);
        }
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().unwrap()));
        }
        self.tail.extend_from_slice(chunks.remainder());
    }

    pub fn finish(&self) -> u64 {
        let mut h = self.clone();
        if !h.tail.is_empty() {
            let mut b = [0u8; 8];
            b[..h.tail.len()].copy_from_slice(&h.tail);
            h.word(u64::from_le_bytes(b));
        }
        mix(h.state ^ h.len)
    }
}

pub fn hash64(data: &[u8]) -> u64 {
    let mut h = Hasher64::new();
    h.update(data);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_equals_one_shot_and_detects_one_bit() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut h = Hasher64::new();
        for part in data.chunks(13) {
            h.update(part);
        }
        assert_eq!(h.finish(), hash64(&data));
        let mut flipped = data.clone();
        flipped[500] ^= 1;
        assert_ne!(hash64(&flipped), hash64(&data));
        assert_ne!(hash64(&data[..999]), hash64(&data));
    }
}
