//! A minimal PNG writer (8-bit RGB) with a small deflate compressor: each row filtered with
//! PNG's "up" filter, then runs of equal bytes coded as distance-1 matches with deflate's fixed
//! Huffman codes. Plots are mostly flat colour, so this shrinks them 20-100x without a
//! compression library.

/// CRC-32 (ISO 3309, as PNG uses) of `bytes`.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in bytes.chunks(5552) {
        for &x in chunk {
            a += x as u32;
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    (b << 16) | a
}

/// Writes bits least-significant first, as deflate does.
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u32, bits: u32) {
        self.acc |= (value as u64) << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code, most-significant bit first.
    fn code(&mut self, code: u32, bits: u32) {
        let reversed = code.reverse_bits() >> (32 - bits);
        self.put(reversed, bits);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// Deflate's fixed code of literal/length symbol `sym` (0..=287).
fn fixed_symbol(bits: &mut Bits, sym: u32) {
    match sym {
        0..=143 => bits.code(0x30 + sym, 8),
        144..=255 => bits.code(0x190 + sym - 144, 9),
        256..=279 => bits.code(sym - 256, 7),
        _ => bits.code(0xC0 + sym - 280, 8),
    }
}

/// Base lengths of the length symbols 257..=285 and their extra bits.
const LENGTHS: [(u32, u32); 29] = [
    (3, 0),
    (4, 0),
    (5, 0),
    (6, 0),
    (7, 0),
    (8, 0),
    (9, 0),
    (10, 0),
    (11, 1),
    (13, 1),
    (15, 1),
    (17, 1),
    (19, 2),
    (23, 2),
    (27, 2),
    (31, 2),
    (35, 3),
    (43, 3),
    (51, 3),
    (59, 3),
    (67, 4),
    (83, 4),
    (99, 4),
    (115, 4),
    (131, 5),
    (163, 5),
    (195, 5),
    (227, 5),
    (258, 0),
];

/// A match of `len` (3..=258) bytes at distance 1.
fn run(bits: &mut Bits, len: u32) {
    let k = LENGTHS
        .iter()
        .rposition(|&(base, _)| base <= len)
        .expect("len >= 3");
    let (base, extra) = LENGTHS[k];
    fixed_symbol(bits, 257 + k as u32);
    if extra > 0 {
        bits.put(len - base, extra);
    }
    bits.code(0, 5); // distance code 0: distance 1
}

/// A zlib stream of `data`: one fixed-Huffman block of literals and distance-1 runs.
pub fn zlib(data: &[u8]) -> Vec<u8> {
    let mut bits = Bits {
        out: vec![0x78, 0x01],
        acc: 0,
        n: 0,
    };
    bits.put(1, 1); // final block
    bits.put(1, 2); // fixed Huffman codes
    let mut k = 0;
    while k < data.len() {
        let b = data[k];
        fixed_symbol(&mut bits, b as u32);
        k += 1;
        // bytes equal to the previous one: matches at distance 1, back to back
        loop {
            let mut same = 0;
            while k + same < data.len() && data[k + same] == b && same < 258 {
                same += 1;
            }
            if same < 3 {
                break;
            }
            run(&mut bits, same as u32);
            k += same;
        }
    }
    fixed_symbol(&mut bits, 256);
    let mut out = bits.finish();
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

/// PNG file bytes of an RGB image (`rgb.len() == 3 * width * height`).
pub fn encode(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
    let stride = 3 * width as usize;
    assert_eq!(rgb.len(), stride * height as usize, "image size");
    let mut filtered = Vec::with_capacity(rgb.len() + height as usize);
    for y in 0..height as usize {
        let row = &rgb[y * stride..(y + 1) * stride];
        if y == 0 {
            filtered.push(0);
            filtered.extend_from_slice(row);
        } else {
            let above = &rgb[(y - 1) * stride..y * stride];
            filtered.push(2); // "up"
            filtered.extend(row.iter().zip(above).map(|(a, b)| a.wrapping_sub(*b)));
        }
    }
    let mut png = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut chunk = |kind: &[u8; 4], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        png.extend_from_slice(&body);
        png.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = vec![];
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, adaptive filters, no interlace
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &zlib(&filtered));
    chunk(b"IEND", &[]);
    png
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny inflater for fixed-Huffman blocks with distance-1 matches (what `zlib` emits),
    /// written from the deflate spec, to check the encoder round-trips.
    fn inflate_fixed(z: &[u8]) -> Vec<u8> {
        assert_eq!(&z[..2], &[0x78, 0x01]);
        let data = &z[2..z.len() - 4];
        let mut pos = 0usize; // bit position
        let mut bit = || {
            let b = (data[pos / 8] >> (pos % 8)) & 1;
            pos += 1;
            b as u32
        };
        assert_eq!(bit(), 1);
        assert_eq!(bit() | (bit() << 1), 1);
        let mut out: Vec<u8> = vec![];
        loop {
            // read a fixed-code symbol, MSB first
            let mut code = 0;
            let mut len = 0;
            let sym = loop {
                code = (code << 1) | bit();
                len += 1;
                match len {
                    7 if code <= 0x17 => break code + 256,
                    8 if (0x30..=0xBF).contains(&code) => break code - 0x30,
                    8 if (0xC0..=0xC7).contains(&code) => break code - 0xC0 + 280,
                    9 if (0x190..=0x1FF).contains(&code) => break code - 0x190 + 144,
                    _ => assert!(len < 9),
                }
            };
            match sym {
                0..=255 => out.push(sym as u8),
                256 => break,
                _ => {
                    let (base, extra) = LENGTHS[(sym - 257) as usize];
                    let mut e = 0;
                    for k in 0..extra {
                        e |= bit() << k;
                    }
                    let mut d = 0;
                    for _ in 0..5 {
                        d = (d << 1) | bit();
                    }
                    assert_eq!(d, 0, "distance 1 only");
                    for _ in 0..base + e {
                        out.push(*out.last().unwrap());
                    }
                }
            }
        }
        assert_eq!(
            u32::from_be_bytes(z[z.len() - 4..].try_into().unwrap()),
            adler32(&out)
        );
        out
    }

    #[test]
    fn zlib_round_trips_runs_and_literals() {
        let mut data = vec![7u8; 1000];
        data.extend((0..=255u8).cycle().take(700));
        data.extend(vec![0u8; 259]);
        data.extend([1, 1, 1, 2, 2, 3, 255, 255, 255, 255]);
        for len in [0, 1, 2, 3, 4, 258, 259, 262, data.len()] {
            assert_eq!(
                inflate_fixed(&zlib(&data[..len])),
                &data[..len],
                "len {len}"
            );
        }
        // flat images compress a lot
        assert!(zlib(&vec![255u8; 100_000]).len() < 1000);
    }

    #[test]
    fn known_checksums() {
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    }

    #[test]
    fn png_layout() {
        let png = encode(2, 1, &[255, 0, 0, 0, 0, 255]);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
    }
}
