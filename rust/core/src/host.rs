//! What this host is: its name (for error messages) and its CPU's instruction-set flags.
//!
//! An AOTInductor package is machine code compiled for some CPU level; run on a CPU without
//! one of its instructions it dies with SIGILL, taking the JVM or Python worker with it. So a
//! package's required flags (its spec's `cpu.flags`, and what its metadata's `AOTI_CPU_ISA`
//! implies) are compared with this host's before its code is loaded.

use std::collections::BTreeSet;
use std::ffi::{c_char, c_int};
use std::sync::OnceLock;

unsafe extern "C" {
    fn gethostname(name: *mut c_char, len: usize) -> c_int;
}

/// This host's name as `gethostname(2)` gives it (what Python's `socket.gethostname()` says).
pub fn name() -> String {
    let mut buf: [c_char; 256] = [0; 256];
    // SAFETY: the buffer is writable for its whole length; one byte is kept for the NUL.
    let rc = unsafe { gethostname(buf.as_mut_ptr(), buf.len() - 1) };
    if rc != 0 {
        return "unknown host".into();
    }
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

static FLAGS: OnceLock<Option<BTreeSet<String>>> = OnceLock::new();

/// This CPU's feature flags, spelled as `/proc/cpuinfo` spells them (`avx2`, `avx512_bf16`,
/// `abm` for LZCNT, ...); `None` where they cannot be read (not Linux, no procfs).
pub fn cpu_flags() -> Option<&'static BTreeSet<String>> {
    FLAGS
        .get_or_init(|| {
            std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|text| parse_cpuinfo_flags(&text))
        })
        .as_ref()
}

/// The first `flags` line (x86) or `Features` line (ARM) of a `/proc/cpuinfo` text.
fn parse_cpuinfo_flags(text: &str) -> Option<BTreeSet<String>> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        matches!(key.trim(), "flags" | "Features")
            .then(|| value.split_whitespace().map(str::to_string).collect())
    })
}

/// The flags of `required` this host lacks, in their order; empty when they cannot be known
/// (then the package is loaded as before: refusing every package there would be worse).
pub fn missing_cpu_flags<'a>(required: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    match cpu_flags() {
        Some(have) => missing_from(have, required),
        None => Vec::new(),
    }
}

fn missing_from<'a>(
    have: &BTreeSet<String>,
    required: impl IntoIterator<Item = &'a str>,
) -> Vec<&'a str> {
    let mut missing: Vec<&str> = Vec::new();
    for flag in required {
        if !have.contains(flag) && !missing.contains(&flag) {
            missing.push(flag);
        }
    }
    missing
}

/// The `/proc/cpuinfo` flags that Inductor's vector ISA (the package metadata's
/// `AOTI_CPU_ISA`, e.g. `AVX512 AVX512_VNNI`) compiles its kernels for: a floor that holds
/// even for packages whose spec says nothing of the CPU (older exports, other tools).
pub fn aoti_isa_flags(aoti_cpu_isa: &str) -> Vec<&'static str> {
    let mut flags = Vec::new();
    for isa in aoti_cpu_isa.split_whitespace() {
        // cpu_vec_isa.py: VecAVX2 "-mavx2 -mfma -mf16c"; VecAVX512 "-mavx512f -mavx512dq
        // -mavx512vl -mavx512bw -mfma"; VNNI adds -mavx512vnni; AMX -mamx-tile/-bf16/-int8.
        flags.extend_from_slice(match isa.to_ascii_uppercase().as_str() {
            "AVX2" => &["avx2", "fma", "f16c"][..],
            "AVX512" => &["avx512f", "avx512dq", "avx512vl", "avx512bw", "fma"][..],
            "AVX512_VNNI" => &["avx512_vnni"][..],
            "AMX_TILE" => &["amx_tile", "amx_bf16", "amx_int8"][..],
            _ => &[][..],
        });
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_flags_line_of_x86_and_the_features_line_of_arm() {
        let x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 fma abm\n\
                   bugs\t\t: sysret_ss_attrs\nprocessor\t: 1\nflags\t\t: fpu\n";
        let flags = parse_cpuinfo_flags(x86).unwrap_or_default();
        assert!(flags.contains("avx2") && flags.contains("abm") && flags.len() == 5);
        let arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve\n";
        assert!(parse_cpuinfo_flags(arm).unwrap_or_default().contains("sve"));
        assert_eq!(parse_cpuinfo_flags("processor\t: 0\n"), None);
    }

    #[test]
    fn missing_flags_keep_their_order_once_each() {
        let have: BTreeSet<String> = ["avx2", "fma"].iter().map(|s| s.to_string()).collect();
        let required = ["avx512f", "avx2", "avx512bw", "avx512f"];
        assert_eq!(missing_from(&have, required), ["avx512f", "avx512bw"]);
    }

    #[test]
    fn inductor_vector_isas_map_to_cpuinfo_flags() {
        assert_eq!(aoti_isa_flags("AVX2"), ["avx2", "fma", "f16c"]);
        let vnni = aoti_isa_flags("AVX512 AVX512_VNNI");
        assert!(vnni.contains(&"avx512bw") && vnni.contains(&"avx512_vnni"));
        assert!(aoti_isa_flags("").is_empty() && aoti_isa_flags("NEON").is_empty());
    }

    #[test]
    fn this_host_has_a_name_and_readable_flags() {
        assert!(!name().is_empty());
        if cfg!(target_os = "linux") {
            assert!(cpu_flags().is_some_and(|f| !f.is_empty()));
        }
    }
}
