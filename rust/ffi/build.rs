// The cdylib looks for libtorch beside itself, then where it was built against (a checkout's
// .venv). Elsewhere (a cluster node) the JVM and Python loaders preload libtorch from the
// node's own `pip install torch` before loading this library.
fn main() {
    let mut rpath = String::from("$ORIGIN");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        rpath.push(':');
        rpath.push_str(&dir);
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{rpath}");
    glibc_floor();
}

/// Links the cdylib against glibc 2.28's symbol versions (torch 2.13's own floor) on a newer
/// build machine: compat/glibc_2_28.c says how. TORCHSPARK_GLIBC_COMPAT=0 (or a failed compile,
/// with a warning) gives the plain link, which needs the build machine's glibc.
fn glibc_floor() {
    println!("cargo:rerun-if-changed=compat/glibc_2_28.c");
    println!("cargo:rerun-if-env-changed=TORCHSPARK_GLIBC_COMPAT");
    println!("cargo:rerun-if-env-changed=CC");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let gnu_x86_64 = var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
        && var("CARGO_CFG_TARGET_ARCH") == "x86_64";
    if !gnu_x86_64 || var("TORCHSPARK_GLIBC_COMPAT") == "0" {
        return;
    }
    let out = std::path::PathBuf::from(var("OUT_DIR")).join("glibc_2_28.o");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = std::process::Command::new(&cc)
        .args(["-O2", "-fPIC", "-c", "compat/glibc_2_28.c", "-o"])
        .arg(&out)
        .status();
    if !matches!(built, Ok(s) if s.success()) {
        println!(
            "cargo:warning=compat/glibc_2_28.c did not compile with {cc} ({built:?}): plain link"
        );
        return;
    }
    println!("cargo:rustc-cdylib-link-arg={}", out.display());
    // The old versions of dlopen and pthread_* live in these two on glibc < 2.34: load them.
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--push-state,--no-as-needed,-l:libdl.so.2,-l:libpthread.so.0,--pop-state"
    );
}
