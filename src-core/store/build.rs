//! Re-runs the build (and so re-embed the migrations) when a migration changes.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
