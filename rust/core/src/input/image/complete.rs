//! Is an encoded image all there, and how large is it, from the file's own structure: some
//! decoders fill a cut-off file silently, so each format's end marker or chunk chain is
//! checked before decoding (JPEG, PNG, GIF, TIFF, WebP), and a GIF's first frame is sized
//! from its header. Called by the row pipeline in [`super::preprocess`].

use std::io::Cursor;

use image::{ImageError, ImageFormat};

/// Whether a decoder error means the data ended early.
pub(super) fn is_eof(e: &ImageError) -> bool {
    match e {
        ImageError::IoError(io) => io.kind() == std::io::ErrorKind::UnexpectedEof,
        _ => {
            let s = e.to_string().to_ascii_lowercase();
            s.contains("eof") || s.contains("end of file") || s.contains("unexpected end")
        }
    }
}

/// Some decoders fill a cut-off image silently (zune-jpeg pads a cut scan; the PNG decoder
/// stops after the pixel data): the file's own structure says whether all of it is there,
/// as PIL's "image file is truncated" does.
pub(super) fn check_complete(format: ImageFormat, b: &[u8]) -> Result<(), &'static str> {
    match format {
        ImageFormat::Jpeg => jpeg_complete(b),
        ImageFormat::Png => png_complete(b),
        ImageFormat::Gif => gif_complete(b),
        ImageFormat::WebP => webp_complete(b),
        ImageFormat::Tiff => tiff_complete(b),
        // The BMP decoder reads rows at known offsets and fails with an end-of-file error
        // (mapped by `is_eof`).
        _ => Ok(()),
    }
}

fn be16(b: &[u8], i: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([
        *b.get(i)?,
        *b.get(i + 1)?,
    ])))
}

/// Walks the JPEG's marker segments and entropy-coded scans up to the end-of-image marker
/// (FFD9); a file that ends before it is truncated. Bytes after it are ignored, like libjpeg.
pub(super) fn jpeg_complete(b: &[u8]) -> Result<(), &'static str> {
    const NO_EOI: &str = "no end-of-image marker";
    let mut i = 2; // after SOI
    loop {
        // The next marker: 0xFF (fill bytes allowed), then its code.
        while *b.get(i).ok_or(NO_EOI)? != 0xFF {
            i += 1; // stray bytes between segments: libjpeg skips them too
        }
        while *b.get(i).ok_or(NO_EOI)? == 0xFF {
            i += 1;
        }
        let marker = b[i];
        i += 1;
        match marker {
            0xD9 => return Ok(()),
            0xD8 | 0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let len = be16(b, i).ok_or(NO_EOI)?;
        i = i.checked_add(len).ok_or(NO_EOI)?;
        if i > b.len() {
            return Err("a marker segment runs past the end of the file");
        }
        if marker == 0xDA {
            // Entropy-coded data: 0xFF is followed by 0x00 (a stuffed byte) or a restart
            // marker inside it; any other marker ends the scan.
            loop {
                i += b
                    .get(i..)
                    .ok_or(NO_EOI)?
                    .iter()
                    .position(|&x| x == 0xFF)
                    .ok_or(NO_EOI)?;
                let next = *b.get(i + 1).ok_or(NO_EOI)?;
                if next == 0x00 || (0xD0..=0xD7).contains(&next) {
                    i += 2;
                } else if next == 0xFF {
                    i += 1;
                } else {
                    break;
                }
            }
        }
    }
}

/// Walks the PNG's chunks up to IEND; a chunk that runs past the end, or no IEND, is
/// truncation.
pub(super) fn png_complete(b: &[u8]) -> Result<(), &'static str> {
    // A file without a whole IHDR first is not a cut PNG but a broken one: the decoder says so.
    if b.get(8..16) != Some(b"\0\0\0\x0dIHDR".as_slice()) || b.len() < 33 {
        return Ok(());
    }
    let mut i = 8;
    loop {
        let len = b
            .get(i..i + 4)
            .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
            .ok_or("no IEND chunk")?;
        let kind = b.get(i + 4..i + 8).ok_or("no IEND chunk")?;
        let end = (i + 12).checked_add(len).ok_or("bad chunk length")?;
        if end > b.len() {
            return Err(if kind == b"IDAT" {
                "an IDAT chunk runs past the end of the file"
            } else {
                "a chunk runs past the end of the file"
            });
        }
        if kind == b"IEND" {
            return Ok(());
        }
        i = end;
    }
}

/// The first frame's width and height from its image descriptor (GIF only).
pub(super) fn gif_first_frame_size(format: ImageFormat, b: &[u8]) -> Option<(u32, u32)> {
    if format != ImageFormat::Gif {
        return None;
    }
    let i = gif_first_descriptor(b).ok()??;
    let at = |k: usize| Some(u32::from(u16::from_le_bytes([*b.get(k)?, *b.get(k + 1)?])));
    Some((at(i + 5)?, at(i + 7)?))
}

/// The size the first frame's bitstream declares (WebP only): a `VP8 ` key frame's or a
/// `VP8L` header's width and height, in a simple file, after a `VP8X` header or in the first
/// `ANMF` frame. The decoder allocates a VP8 frame at this size before comparing it with the
/// canvas, so a 1x1 canvas could otherwise hold a 16383x16383 frame.
pub(super) fn webp_first_frame_size(format: ImageFormat, b: &[u8]) -> Option<(u32, u32)> {
    if format != ImageFormat::WebP || b.get(0..4)? != b"RIFF" || b.get(8..12)? != b"WEBP" {
        return None;
    }
    webp_frame_in(b.get(12..)?)
}

/// The first `VP8 `/`VP8L` bitstream's size among RIFF chunks (an `ANMF` chunk's frame data,
/// after its 16-byte frame header, is searched the same way).
fn webp_frame_in(mut b: &[u8]) -> Option<(u32, u32)> {
    while b.len() >= 8 {
        let size = u32::from_le_bytes(b[4..8].try_into().ok()?) as usize;
        let data = &b[8..b.len().min(8usize.saturating_add(size))];
        let le16 = |k: usize| {
            Some(u32::from(u16::from_le_bytes([
                *data.get(k)?,
                *data.get(k + 1)?,
            ])))
        };
        match &b[0..4] {
            // Frame tag (3 bytes, bit 0 clear for a key frame), start code, 14-bit sizes.
            b"VP8 " => {
                return (data.first()? & 1 == 0 && data.get(3..6)? == [0x9d, 0x01, 0x2a])
                    .then(|| Some((le16(6)? & 0x3fff, le16(8)? & 0x3fff)))
                    .flatten();
            }
            // Signature 0x2f, then 14-bit width - 1 and height - 1.
            b"VP8L" => {
                let bits = u32::from_le_bytes(data.get(1..5)?.try_into().ok()?);
                return (*data.first()? == 0x2f)
                    .then_some(((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1));
            }
            b"ANMF" => return webp_frame_in(data.get(16..)?),
            _ => {}
        }
        let next = 8usize.saturating_add(size).saturating_add(size & 1);
        b = b.get(next..)?;
    }
    None
}

/// Walks the GIF's blocks to the end of the first image's data (what is decoded).
fn gif_complete(b: &[u8]) -> Result<(), &'static str> {
    gif_first_descriptor(b).map(|_| ())
}

/// Walks the GIF's blocks to the end of the first image's data; the offset of that image's
/// descriptor (`None`: no image before a trailer or unknown block, left to the decoder).
fn gif_first_descriptor(b: &[u8]) -> Result<Option<usize>, &'static str> {
    const CUT: &str = "the first frame's data ends early";
    let table = |flags: u8| {
        if flags & 0x80 != 0 {
            3usize << ((flags & 7) + 1)
        } else {
            0
        }
    };
    let sub_blocks = |mut i: usize| -> Result<usize, &'static str> {
        loop {
            let n = usize::from(*b.get(i).ok_or(CUT)?);
            i += 1 + n;
            if n == 0 {
                return if i <= b.len() { Ok(i) } else { Err(CUT) };
            }
        }
    };
    let mut i = 13 + table(*b.get(10).ok_or(CUT)?);
    loop {
        match *b.get(i).ok_or(CUT)? {
            0x21 => i = sub_blocks(i + 2)?,
            0x2C => {
                let flags = *b.get(i + 9).ok_or(CUT)?;
                // descriptor (10 bytes), local table, LZW code size, then the data sub-blocks
                sub_blocks(i + 10 + table(flags) + 1)?;
                return Ok(Some(i));
            }
            // A trailer or anything else: the decoder reports it.
            _ => return Ok(None),
        }
    }
}

/// Every strip or tile of the first TIFF page must lie inside the file: the decoders inflate a
/// cut Deflate strip without complaint. An unreadable directory is left to the decoder.
fn tiff_complete(b: &[u8]) -> Result<(), &'static str> {
    use tiff::tags::Tag;
    let Ok(mut d) = tiff::decoder::Decoder::new(Cursor::new(b)) else {
        return Ok(());
    };
    let mut spans = |offsets, counts| -> Option<Vec<(u64, u64)>> {
        let o = d.get_tag_u64_vec(offsets).ok()?;
        let c = d.get_tag_u64_vec(counts).ok()?;
        Some(o.into_iter().zip(c).collect())
    };
    let parts = spans(Tag::StripOffsets, Tag::StripByteCounts)
        .or_else(|| spans(Tag::TileOffsets, Tag::TileByteCounts))
        .unwrap_or_default();
    if parts
        .iter()
        .any(|&(o, n)| o.saturating_add(n) > b.len() as u64)
    {
        Err("a strip or tile runs past the end of the file")
    } else {
        Ok(())
    }
}

/// A copy of a classic TIFF whose first page is RGB with one *unspecified* extra sample
/// (ExtraSamples = 0), marked as unassociated alpha (2) instead; `None` for any other file.
pub(super) fn tiff_extra_sample_as_alpha(b: &[u8]) -> Option<Vec<u8>> {
    let le = match b.get(..4)? {
        [b'I', b'I', 42, 0] => true,
        [b'M', b'M', 0, 42] => false,
        _ => return None, // BigTIFF or not TIFF
    };
    let u16_at = |i: usize| -> Option<u16> {
        let v = [*b.get(i)?, *b.get(i + 1)?];
        Some(if le {
            u16::from_le_bytes(v)
        } else {
            u16::from_be_bytes(v)
        })
    };
    let u32_at = |i: usize| -> Option<u32> {
        let v = [*b.get(i)?, *b.get(i + 1)?, *b.get(i + 2)?, *b.get(i + 3)?];
        Some(if le {
            u32::from_le_bytes(v)
        } else {
            u32::from_be_bytes(v)
        })
    };
    let ifd = u32_at(4)? as usize;
    let (mut rgb, mut extra) = (false, None);
    for k in 0..usize::from(u16_at(ifd)?) {
        let e = ifd + 2 + 12 * k;
        let (tag, kind, count) = (u16_at(e)?, u16_at(e + 2)?, u32_at(e + 4)?);
        match (tag, kind, count) {
            (262, 3, 1) => rgb = u16_at(e + 8)? == 2, // PhotometricInterpretation: RGB
            (338, 3, 1) if u16_at(e + 8)? == 0 => extra = Some(e + 8), // ExtraSamples
            _ => {}
        }
    }
    let at = extra.filter(|_| rgb)?;
    let mut out = b.to_vec();
    let two = if le {
        2u16.to_le_bytes()
    } else {
        2u16.to_be_bytes()
    };
    out.get_mut(at..at + 2)?.copy_from_slice(&two);
    Some(out)
}

/// A WebP file is one RIFF chunk whose header gives its size.
fn webp_complete(b: &[u8]) -> Result<(), &'static str> {
    let size = b
        .get(4..8)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
        .ok_or("no RIFF header")?;
    if b.len() < size.saturating_add(8) {
        Err("shorter than its RIFF header says")
    } else {
        Ok(())
    }
}
