//! Compiles src/stdio.c: dprintf's va_start and the walk of glibc's list
//! of stdio streams (src/stdio.rs says why they are C).

fn main() {
    println!("cargo:rerun-if-changed=src/stdio.c");
    cc::Build::new()
        .file("src/stdio.c")
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .compile("ipprototls_stdio");
}
