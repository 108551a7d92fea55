// Test binaries and examples of this crate find libtorch where torch-sys found it
// (the venv's torch/lib), so `cargo test` needs no LD_LIBRARY_PATH.
//
// The AOTInductor bridge (cpp/aoti_bridge.cpp) is compiled the way torch-sys compiles its own
// C++: the `cc` crate, against the same libtorch's headers, C++17 and the new libstdc++ ABI.
fn main() {
    println!("cargo:rerun-if-changed=cpp/aoti_bridge.cpp");
    println!("cargo:rerun-if-changed=cpp/vision_ops.cpp");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not report libtorch's lib directory (DEP_TCH_LIBTORCH_LIB)");
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    let include = std::path::Path::new(&lib).join("../include");
    // The CPU torchvision::nms for scripted detectors (cpp/vision_ops.cpp): the same flags.
    for (file, name) in [
        ("cpp/aoti_bridge.cpp", "torchspark_aoti"),
        ("cpp/vision_ops.cpp", "torchspark_vision_ops"),
    ] {
        cc::Build::new()
            .cpp(true)
            .pic(true)
            .warnings(false)
            .include(&include)
            .include(include.join("torch/csrc/api/include"))
            .flag("-std=c++17")
            .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
            .file(file)
            .compile(name);
    }
}
