/* Links libtorchspark.so against glibc 2.28's symbol versions on a newer build machine, so that
 * the library loads where torch's own wheels do (glibc >= 2.28: RHEL 8, Ubuntu 20.04, Debian 11).
 *
 * The linker binds each undefined symbol to the default version the build machine's glibc
 * defines (pthread_create@GLIBC_2.34, ...). Every definition below is local to the .so (hidden,
 * and rustc's version script exports only the Rust API), so the library's own references bind
 * here first, and each stub jumps to the same function under the oldest version every x86_64
 * glibc still exports. Symbols that 2.28 lacks get a local implementation instead.
 * tests/python/test_glibc_floor.py checks the result: any symbol left above the floor fails it.
 */

/* A tail-jump stub: `name` (hidden) -> `name@ver`; one section per stub so that
 * --gc-sections drops the unused ones and their version references with them. */
#define STUB(name, ver)                                                                   \
    __asm__(".section .text.ts_compat_" #name ",\"ax\",@progbits\n"                     \
            ".symver ts_compat_old_" #name ", " #name "@" #ver "\n"                     \
            ".globl " #name "\n.hidden " #name "\n.type " #name ", @function\n"         \
            #name ":\n\tjmp ts_compat_old_" #name "@PLT\n"                               \
            ".size " #name ", .-" #name "\n.previous\n")

/* Moved from libdl/libpthread into libc in 2.34 (new default versions there). The old
 * versions live in libdl.so.2/libpthread.so.0 on older glibc; the dynamic linker matches a
 * version by name, in whichever loaded library defines it. */
STUB(dlopen, GLIBC_2.2.5);
STUB(dlsym, GLIBC_2.2.5);
STUB(dladdr, GLIBC_2.2.5);
STUB(dlclose, GLIBC_2.2.5);
STUB(dlerror, GLIBC_2.2.5);
STUB(pthread_create, GLIBC_2.2.5);
STUB(pthread_detach, GLIBC_2.2.5);
STUB(pthread_join, GLIBC_2.2.5);
STUB(pthread_key_create, GLIBC_2.2.5);
STUB(pthread_key_delete, GLIBC_2.2.5);
STUB(pthread_getspecific, GLIBC_2.2.5);
STUB(pthread_setspecific, GLIBC_2.2.5);
STUB(pthread_once, GLIBC_2.2.5);
/* (pthread_atfork stays libc_nonshared.a's, which passes this library's __dso_handle.) */
STUB(pthread_attr_getstack, GLIBC_2.2.5);
STUB(pthread_attr_getguardsize, GLIBC_2.2.5);
STUB(pthread_attr_setstacksize, GLIBC_2.2.5);
STUB(pthread_getattr_np, GLIBC_2.2.5);
STUB(pthread_setname_np, GLIBC_2.12);
STUB(pthread_getname_np, GLIBC_2.12);
STUB(pthread_sigmask, GLIBC_2.2.5);
STUB(pthread_kill, GLIBC_2.2.5);
STUB(pthread_mutexattr_settype, GLIBC_2.2.5);
STUB(pthread_mutexattr_init, GLIBC_2.2.5);
STUB(pthread_mutexattr_destroy, GLIBC_2.2.5);
STUB(pthread_rwlock_rdlock, GLIBC_2.2.5);
STUB(pthread_rwlock_wrlock, GLIBC_2.2.5);
STUB(pthread_rwlock_unlock, GLIBC_2.2.5);
STUB(pthread_rwlock_destroy, GLIBC_2.2.5);
STUB(pthread_condattr_setclock, GLIBC_2.3.3);
STUB(pthread_condattr_init, GLIBC_2.2.5);
STUB(pthread_condattr_destroy, GLIBC_2.2.5);
/* 2.29 gave exp/log/pow new versions (no SVID error handling); the results are the same. */
STUB(exp, GLIBC_2.2.5);
STUB(log, GLIBC_2.2.5);
STUB(pow, GLIBC_2.2.5);
STUB(exp2, GLIBC_2.2.5);
STUB(log2, GLIBC_2.2.5);
/* libstdc++ (GCC >= 9/11 headers) symbols newer than torch's own need (GLIBCXX_3.4.22):
 * std::ostringstream() is ostringstream(ios_base::out) (GCC < 9 had only that constructor),
 * and GCC < 11 threw bad_alloc where __throw_bad_array_new_length now throws. */
__asm__(".section .text.ts_compat_ostringstream,\"ax\",@progbits\n"
        ".globl _ZNSt7__cxx1119basic_ostringstreamIcSt11char_traitsIcESaIcEEC1Ev\n"
        ".hidden _ZNSt7__cxx1119basic_ostringstreamIcSt11char_traitsIcESaIcEEC1Ev\n"
        ".type _ZNSt7__cxx1119basic_ostringstreamIcSt11char_traitsIcESaIcEEC1Ev, @function\n"
        "_ZNSt7__cxx1119basic_ostringstreamIcSt11char_traitsIcESaIcEEC1Ev:\n"
        "\tmovl $16, %esi\n" /* std::ios_base::out */
        "\tjmp _ZNSt7__cxx1119basic_ostringstreamIcSt11char_traitsIcESaIcEEC1ESt13_Ios_Openmode@PLT\n"
        ".previous\n");
__asm__(".section .text.ts_compat_bad_array,\"ax\",@progbits\n"
        ".globl _ZSt28__throw_bad_array_new_lengthv\n"
        ".hidden _ZSt28__throw_bad_array_new_lengthv\n"
        ".type _ZSt28__throw_bad_array_new_lengthv, @function\n"
        "_ZSt28__throw_bad_array_new_lengthv:\n"
        "\tjmp _ZSt17__throw_bad_allocv@PLT\n"
        ".previous\n");

/* stat64 & co. became libc symbols in 2.33; before, libc_nonshared.a wrapped __xstat64 and
 * friends (version 1 = _STAT_VER_LINUX on x86_64), which later glibc still exports. */
struct stat64;
int ts_compat_xstat64(int ver, const char *path, struct stat64 *buf);
int ts_compat_lxstat64(int ver, const char *path, struct stat64 *buf);
int ts_compat_fxstat64(int ver, int fd, struct stat64 *buf);
int ts_compat_fxstatat64(int ver, int dirfd, const char *path, struct stat64 *buf, int flags);
__asm__(".symver ts_compat_xstat64, __xstat64@GLIBC_2.2.5");
__asm__(".symver ts_compat_lxstat64, __lxstat64@GLIBC_2.2.5");
__asm__(".symver ts_compat_fxstat64, __fxstat64@GLIBC_2.2.5");
__asm__(".symver ts_compat_fxstatat64, __fxstatat64@GLIBC_2.4");
#define LOCAL(sec) __attribute__((visibility("hidden"), section(".text.ts_compat_" sec)))
LOCAL("stat64") int stat64(const char *path, struct stat64 *buf) {
    return ts_compat_xstat64(1, path, buf);
}
LOCAL("lstat64") int lstat64(const char *path, struct stat64 *buf) {
    return ts_compat_lxstat64(1, path, buf);
}
LOCAL("fstat64") int fstat64(int fd, struct stat64 *buf) { return ts_compat_fxstat64(1, fd, buf); }
LOCAL("fstatat64") int fstatat64(int dirfd, const char *path, struct stat64 *buf, int flags) {
    return ts_compat_fxstatat64(1, dirfd, path, buf, flags);
}

/* gettid arrived in 2.30: the system call it wraps. */
long syscall(long number, ...);
LOCAL("gettid") int gettid(void) { return (int)syscall(186 /* SYS_gettid on x86_64 */); }

/* libstdc++'s headers (GCC >= 11) read glibc 2.32's __libc_single_threaded to skip atomic
 * operations in a single-threaded process. Ours is always 0 ("maybe threaded"): the library
 * always takes the atomic path, which is what older libstdc++ did. */
__attribute__((visibility("hidden"))) char __libc_single_threaded = 0;
