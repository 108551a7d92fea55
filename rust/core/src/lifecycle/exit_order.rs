//! Keeps the exit handler ahead of libtorch's static destructors.
//!
//! Exit handlers run last-registered first. libtorch registers most of its statics' destructors
//! lazily, when a static is first used (`at::globalContext()`, each operator's handle, oneDNN's
//! primitive cache...), often during a forward pass long after the library registered its own
//! handler: each of those would be destroyed before the handler drains the passes that use it.
//! So every call to `__cxa_atexit` from torch's loaded objects (libtorch's own, and those that
//! link it: this library, AOTInductor wrappers, torchvision's operators) goes through
//! [`cxa_atexit_hook`] (their GOT slot for it is pointed at the hook, once per object), which
//! registers the library's handler again after the new one: one extra exit-list entry per lazy
//! static, a bounded number. Other objects of the host (the JVM's, Python's) are not touched.

use std::collections::HashSet;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::Mutex;

use once_cell::sync::Lazy;

type CxaAtexit = extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, *mut c_void) -> c_int;

unsafe extern "C" {
    fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn dl_iterate_phdr(
        callback: extern "C" fn(*mut DlPhdrInfo, usize, *mut c_void) -> c_int,
        data: *mut c_void,
    ) -> c_int;
    fn mprotect(addr: *mut c_void, len: usize, prot: c_int) -> c_int;
    fn sysconf(name: c_int) -> i64;
}

const RTLD_NOW: c_int = 2;
const RTLD_NOLOAD: c_int = 4;
const PROT_READ: c_int = 1;
const PROT_WRITE: c_int = 2;
const SC_PAGESIZE: c_int = 30;

const PT_DYNAMIC: u32 = 2;
const PT_GNU_RELRO: u32 = 0x6474_e552;
const DT_NULL: i64 = 0;
const DT_PLTRELSZ: i64 = 2;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;
const DT_RELA: i64 = 7;
const DT_RELASZ: i64 = 8;
const DT_JMPREL: i64 = 23;

#[cfg(target_arch = "x86_64")]
const GOT_RELOCS: &[u32] = &[6, 7]; // R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT
#[cfg(target_arch = "aarch64")]
const GOT_RELOCS: &[u32] = &[1025, 1026]; // R_AARCH64_GLOB_DAT, R_AARCH64_JUMP_SLOT
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const GOT_RELOCS: &[u32] = &[]; // elsewhere: registered after loads only

#[repr(C)]
struct DlPhdrInfo {
    addr: usize,
    name: *const c_char,
    phdr: *const Phdr,
    phnum: u16,
}

#[repr(C)]
struct Phdr {
    p_type: u32,
    p_flags: u32,
    p_offset: u64,
    p_vaddr: u64,
    p_paddr: u64,
    p_filesz: u64,
    p_memsz: u64,
    p_align: u64,
}

#[repr(C)]
struct Dyn {
    tag: i64,
    val: u64,
}

#[repr(C)]
struct Rela {
    offset: u64,
    info: u64,
    addend: i64,
}

#[repr(C)]
struct Sym {
    name: u32,
    info: u8,
    other: u8,
    shndx: u16,
    value: u64,
    size: u64,
}

/// The objects already hooked, by load address and path (an unloaded object's address may be
/// reused by another, e.g. an AOTInductor package's wrapper loaded again).
static HOOKED: Lazy<Mutex<HashSet<(usize, String)>>> = Lazy::new(|| Mutex::new(HashSet::new()));

/// libc's `__cxa_atexit`, looked up in libc itself: this object's own GOT slot for it may be
/// hooked, and a non-PIE executable's canonical PLT address for it (what a global lookup can
/// return) jumps through a GOT slot that is hooked too.
static REAL: Lazy<Option<CxaAtexit>> = Lazy::new(|| {
    // SAFETY: dlopen of the loaded libc (RTLD_NOLOAD) and dlsym with NUL-terminated names.
    let p = unsafe {
        let libc = dlopen(c"libc.so.6".as_ptr(), RTLD_NOW | RTLD_NOLOAD);
        if libc.is_null() {
            return None;
        }
        dlsym(libc, c"__cxa_atexit".as_ptr())
    };
    if p.is_null() || std::ptr::eq(p.cast_const(), cxa_atexit_hook as *const c_void) {
        return None;
    }
    // SAFETY: libc's function, of this signature.
    Some(unsafe { std::mem::transmute::<*mut c_void, CxaAtexit>(p) })
});

/// Registers `f` as the library would have, then the exit handler again after it.
extern "C" fn cxa_atexit_hook(
    f: extern "C" fn(*mut c_void),
    arg: *mut c_void,
    dso: *mut c_void,
) -> c_int {
    let Some(real) = *REAL else {
        return -1;
    };
    let r = real(f, arg, dso);
    super::register_on_exit();
    r
}

/// Points the `__cxa_atexit` GOT slots of every loaded torch object not hooked yet
/// ([`is_torch_name`], [`needs_torch`]) at [`cxa_atexit_hook`]. Idempotent; call again after a load may have
/// brought new objects.
pub(super) fn hook_loaded_objects() {
    if REAL.is_none() {
        return;
    }
    let mut hooked = HOOKED.lock().unwrap_or_else(|e| e.into_inner());
    let data: *mut HashSet<(usize, String)> = &mut *hooked;
    // SAFETY: the callback only reads the loader's structures it is handed; `data` outlives
    // the call.
    unsafe {
        dl_iterate_phdr(visit, data.cast());
    }
}

extern "C" fn visit(info: *mut DlPhdrInfo, _size: usize, data: *mut c_void) -> c_int {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: dl_iterate_phdr hands a valid info; `data` is hook_loaded_objects' set.
        let (info, hooked) = unsafe { (&*info, &mut *data.cast::<HashSet<(usize, String)>>()) };
        let name = if info.name.is_null() {
            ""
        } else {
            // SAFETY: a NUL-terminated path owned by the loader.
            unsafe { CStr::from_ptr(info.name) }.to_str().unwrap_or("")
        };
        let file = name.rsplit('/').next().unwrap_or(name);
        // Only torch's objects: their lazily registered statics are what a pass in flight
        // uses. A JVM's or Python's own objects (and libc, the loader) are left as they are.
        // SAFETY: the object is loaded and its headers are the loader's.
        if !(is_torch_name(file) || unsafe { needs_torch(info) }) {
            return;
        }
        if hooked.insert((info.addr, name.to_string())) {
            // SAFETY: the object is loaded and its headers are the loader's.
            unsafe { hook_object(info) };
        }
    });
    0
}

/// libtorch's own objects (`libtorch_cpu.so`, `libc10.so`, `libtorch.so`, their CUDA
/// twins, `libtorch_python.so`) and this library (`libtorchspark.so`).
fn is_torch_name(file: &str) -> bool {
    file.starts_with("libtorch") || file.starts_with("libc10")
}

/// Whether the object links libtorch (`DT_NEEDED` of a `libtorch*`/`libc10*` name): an
/// AOTInductor package's wrapper `.so`, torchvision's operators, this library.
///
/// # Safety
/// `info` describes an object currently loaded.
unsafe fn needs_torch(info: &DlPhdrInfo) -> bool {
    const DT_NEEDED: i64 = 1;
    let base = info.addr;
    // SAFETY: phdr points to phnum program headers of a loaded object.
    let phdrs = unsafe { std::slice::from_raw_parts(info.phdr, usize::from(info.phnum)) };
    let Some(dynamic) = phdrs.iter().find(|p| p.p_type == PT_DYNAMIC) else {
        return false;
    };
    let abs = |v: u64| {
        let v = v as usize;
        if v < base { base + v } else { v }
    };
    let (mut strtab, mut needed) = (0usize, Vec::new());
    let mut d = (base + dynamic.p_vaddr as usize) as *const Dyn;
    loop {
        // SAFETY: the dynamic section is an array ended by DT_NULL.
        let entry = unsafe { &*d };
        match entry.tag {
            DT_NULL => break,
            DT_STRTAB => strtab = abs(entry.val),
            DT_NEEDED => needed.push(entry.val as usize),
            _ => {}
        }
        // SAFETY: still inside the array (DT_NULL not reached).
        d = unsafe { d.add(1) };
    }
    strtab != 0
        && needed.into_iter().any(|at| {
            // SAFETY: a NUL-terminated name in the object's string table.
            let name = unsafe { CStr::from_ptr((strtab + at) as *const c_char) };
            name.to_str().is_ok_and(is_torch_name)
        })
}

/// One object: each GLOB_DAT / JUMP_SLOT relocation of `__cxa_atexit` gets the hook.
///
/// # Safety
/// `info` describes an object currently loaded.
unsafe fn hook_object(info: &DlPhdrInfo) {
    let base = info.addr;
    // SAFETY: phdr points to phnum program headers of a loaded object.
    let phdrs = unsafe { std::slice::from_raw_parts(info.phdr, usize::from(info.phnum)) };
    let Some(dynamic) = phdrs.iter().find(|p| p.p_type == PT_DYNAMIC) else {
        return;
    };
    let relro: Vec<(usize, usize)> = phdrs
        .iter()
        .filter(|p| p.p_type == PT_GNU_RELRO)
        .map(|p| {
            (
                base + p.p_vaddr as usize,
                base + (p.p_vaddr + p.p_memsz) as usize,
            )
        })
        .collect();
    // The loader relocates these addresses in place on most targets; an unrelocated one is
    // below the load address.
    let abs = |v: u64| {
        let v = v as usize;
        if v < base { base + v } else { v }
    };
    let (mut strtab, mut symtab) = (0usize, 0usize);
    let mut tables: [(usize, usize); 2] = [(0, 0), (0, 0)];
    let mut d = (base + dynamic.p_vaddr as usize) as *const Dyn;
    loop {
        // SAFETY: the dynamic section is an array ended by DT_NULL.
        let entry = unsafe { &*d };
        match entry.tag {
            DT_NULL => break,
            DT_STRTAB => strtab = abs(entry.val),
            DT_SYMTAB => symtab = abs(entry.val),
            DT_JMPREL => tables[0].0 = abs(entry.val),
            DT_PLTRELSZ => tables[0].1 = entry.val as usize,
            DT_RELA => tables[1].0 = abs(entry.val),
            DT_RELASZ => tables[1].1 = entry.val as usize,
            _ => {}
        }
        // SAFETY: still inside the array (DT_NULL not reached).
        d = unsafe { d.add(1) };
    }
    if strtab == 0 || symtab == 0 {
        return;
    }
    for (at, bytes) in tables {
        if at == 0 || bytes == 0 {
            continue;
        }
        // SAFETY: a relocation table of the object, `bytes` long.
        let relas = unsafe {
            std::slice::from_raw_parts(at as *const Rela, bytes / std::mem::size_of::<Rela>())
        };
        for r in relas {
            if !GOT_RELOCS.contains(&((r.info & 0xffff_ffff) as u32)) {
                continue;
            }
            let sym_index = (r.info >> 32) as usize;
            // SAFETY: the symbol table entry the relocation names, and its name in strtab.
            let name = unsafe {
                let sym = &*(symtab as *const Sym).add(sym_index);
                CStr::from_ptr((strtab + sym.name as usize) as *const c_char)
            };
            if name.to_bytes() == b"__cxa_atexit" {
                // SAFETY: the relocation's target is a pointer-sized GOT slot of the object.
                unsafe { patch(base + r.offset as usize, &relro) };
            }
        }
    }
}

/// Writes the hook into the GOT slot at `slot` (made writable for the write when it lies in a
/// RELRO segment, which is read-only again afterwards).
///
/// # Safety
/// `slot` is an aligned, pointer-sized GOT slot of a loaded object.
unsafe fn patch(slot: usize, relro: &[(usize, usize)]) {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { sysconf(SC_PAGESIZE) }).unwrap_or(4096);
    let start = slot & !(page - 1);
    let read_only = relro.iter().any(|&(a, b)| slot >= a && slot < b);
    let hook = cxa_atexit_hook as *const () as usize;
    // SAFETY: the page holds the slot; an aligned word store is atomic for readers.
    unsafe {
        if read_only && mprotect(start as *mut c_void, page, PROT_READ | PROT_WRITE) != 0 {
            return;
        }
        std::ptr::write_volatile(slot as *mut usize, hook);
        if read_only {
            mprotect(start as *mut c_void, page, PROT_READ);
        }
    }
}
