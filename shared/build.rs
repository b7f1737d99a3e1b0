//! Copies the Lua scripts of `src/` into `OUT_DIR/lua/`, each line that is only a comment
//! left empty, for [`lua!`](src/script.rs) to compile in: the comments explain the scripts
//! to their readers and are no use to Redis, and they were half of the scripts' bytes in
//! every Spin component. Lines keep their numbers, so a Lua error's line is the file's.
//!
//! Writes `openapi.json` without the whitespace between its tokens into
//! `OUT_DIR/openapi.json`, which [`crate::openapi::DOCUMENT`](src/openapi.rs) compiles in:
//! the committed file is indented for its readers, and the indentation was 47% of its
//! bytes in every Spin component.

use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=../openapi.json");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    copy_scripts(Path::new("src"), &out_dir.join("lua"));
    let document = fs::read_to_string("../openapi.json").expect("openapi.json");
    fs::write(out_dir.join("openapi.json"), without_whitespace(&document)).expect("the compact openapi.json");
}

/// JSON `text` without the whitespace between its tokens (what is inside a string stays).
fn without_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

fn copy_scripts(dir: &Path, out: &Path) {
    for entry in fs::read_dir(dir).expect("the source folder") {
        let path = entry.expect("a source entry").path();
        if path.is_dir() {
            copy_scripts(&path, &out.join(path.file_name().expect("a folder name")));
        } else if path.extension().is_some_and(|e| e == "lua") {
            let text = fs::read_to_string(&path).expect("a Lua script");
            fs::create_dir_all(out).expect("the scripts' output folder");
            let target = out.join(path.file_name().expect("a file name"));
            fs::write(target, without_comment_lines(&text)).expect("the stripped script");
        }
    }
}

/// `text` with every line that holds only a `--` comment emptied. Comments after code stay:
/// telling them from a `--` inside a string literal would take a Lua lexer.
fn without_comment_lines(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| {
            let comment = line.trim_start().starts_with("--");
            match (comment, line.ends_with('\n')) {
                (false, _) => line,
                (true, true) => "\n",
                (true, false) => "",
            }
        })
        .collect()
}
