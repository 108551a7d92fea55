//! Which backend reads a model file: by its content, else by its extension.
//!
//! TorchScript files and AOTInductor packages are both zip archives; their entry names tell
//! them apart (`<root>/code/`, `<root>/data.pkl` vs `<root>/data/aotinductor/<model>/...`).
//! Only the central directory at the end of the file is read.

use std::path::Path;

/// A model file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `torch.jit.save` output (`.pt`).
    TorchScript,
    /// An AOTInductor package (`.pt2`, `torch._inductor.aoti_compile_and_package`).
    Aoti,
}

impl Format {
    /// What error messages call it.
    pub fn name(self) -> &'static str {
        match self {
            Format::TorchScript => "TorchScript model",
            Format::Aoti => "AOTInductor package",
        }
    }

    /// The content decides; a file whose content says nothing (not a zip, a truncated one)
    /// goes by its extension, so that its load error comes from the backend the user meant.
    pub fn detect(path: &Path, bytes: &[u8]) -> Format {
        if let Some(names) = zip_entry_names(bytes) {
            if names.iter().any(|n| n.contains("/data/aotinductor/")) {
                return Format::Aoti;
            }
            if names
                .iter()
                .any(|n| n.ends_with("/data.pkl") || n.contains("/code/"))
            {
                return Format::TorchScript;
            }
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("pt2") => Format::Aoti,
            _ => Format::TorchScript,
        }
    }
}

/// The model names inside an AOTInductor package (`<root>/data/aotinductor/<name>/...`).
pub(crate) fn package_models(bytes: &[u8]) -> Vec<String> {
    let mut names: Vec<String> = zip_entry_names(bytes)
        .unwrap_or_default()
        .iter()
        .filter_map(|n| {
            let (_, rest) = n.split_once("/data/aotinductor/")?;
            let (model, _) = rest.split_once('/')?;
            Some(model.to_string())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize)
}

fn u32_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as u64)
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Entry names from the zip central directory (zip64 too); `None` if it is not a readable zip.
fn zip_entry_names(b: &[u8]) -> Option<Vec<String>> {
    const EOCD: &[u8] = &[0x50, 0x4b, 0x05, 0x06];
    const EOCD64: u64 = 0x0606_4b50;
    const LOCATOR64: u64 = 0x0706_4b50;
    const ENTRY: u64 = 0x0201_4b50;
    // The end record is 22 bytes plus a comment of at most 64 KiB.
    let floor = b.len().saturating_sub(22 + 65_535);
    let eocd = (floor..b.len().saturating_sub(21))
        .rev()
        .find(|&i| b.get(i..i + 4) == Some(EOCD))?;
    let (mut count, mut offset) = (u16_at(b, eocd + 10)? as u64, u32_at(b, eocd + 16)?);
    if (offset == 0xFFFF_FFFF || count == 0xFFFF)
        && let Some(loc) = eocd.checked_sub(20)
        && u32_at(b, loc)? == LOCATOR64
    {
        let at = usize::try_from(u64_at(b, loc + 8)?).ok()?;
        if u32_at(b, at)? != EOCD64 {
            return None;
        }
        count = u64_at(b, at + 32)?;
        offset = u64_at(b, at + 48)?;
    }
    let mut at = usize::try_from(offset).ok()?;
    let mut names = Vec::new();
    for _ in 0..count {
        if u32_at(b, at)? != ENTRY {
            return None;
        }
        let (name_len, extra, comment) = (
            u16_at(b, at + 28)?,
            u16_at(b, at + 30)?,
            u16_at(b, at + 32)?,
        );
        let name = b.get(at + 46..at + 46 + name_len)?;
        names.push(String::from_utf8_lossy(name).into_owned());
        at += 46 + name_len + extra + comment;
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_content_goes_by_extension() {
        assert_eq!(Format::detect(Path::new("m.pt2"), b"junk"), Format::Aoti);
        assert_eq!(Format::detect(Path::new("m.PT2"), b""), Format::Aoti);
        assert_eq!(
            Format::detect(Path::new("m.pt"), b"junk"),
            Format::TorchScript
        );
        assert_eq!(
            Format::detect(Path::new("model"), b"junk"),
            Format::TorchScript
        );
    }

    #[test]
    fn truncated_zip_is_not_read() {
        assert_eq!(zip_entry_names(&[0x50, 0x4b, 0x05, 0x06, 0, 0]), None);
    }
}
