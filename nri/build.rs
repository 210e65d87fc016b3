//! Generates NRI's protobuf messages and ttrpc service glue into OUT_DIR.
//!
//! ttrpc-codegen parses the .proto in pure Rust, so building needs no protoc.
//! The generated files start with inner attributes (`#![allow(..)]`) and
//! inner doc comments, which `include!` cannot take; they are stripped here
//! and `src/api.rs` applies the equivalent outer attributes instead.

use std::fs;
use std::path::{Path, PathBuf};

const PROTO_DIR: &str = "proto";
const PROTO_FILE: &str = "nri.proto";
/// Files ttrpc-codegen writes for nri.proto: messages, then services.
const GENERATED: [&str; 2] = ["nri.rs", "nri_ttrpc.rs"];

fn main() {
    let proto = Path::new(PROTO_DIR).join(PROTO_FILE);
    println!("cargo:rerun-if-changed={}", proto.display());
    println!("cargo:rerun-if-changed=build.rs");

    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR for build scripts"));
    ttrpc_codegen::Codegen::new()
        .out_dir(&out_dir)
        .input(&proto)
        .include(PROTO_DIR)
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize { async_all: false, ..Default::default() })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generating NRI ttrpc code from proto/nri.proto");

    for name in GENERATED {
        let path = out_dir.join(name);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading generated {}: {e}", path.display()));
        let kept: Vec<&str> = text
            .lines()
            .filter(|line| {
                let line = line.trim_start();
                !(line.starts_with("#![") || line.starts_with("//!"))
            })
            .collect();
        fs::write(&path, kept.join("\n")).unwrap_or_else(|e| panic!("rewriting {}: {e}", path.display()));
    }
}
