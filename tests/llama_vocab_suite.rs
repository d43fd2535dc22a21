//! llama.cpp's own tokenizer test suite: every `models/ggml-vocab-*.gguf` of the llama.cpp copy in
//! the llama-cpp-python 0.3.36 sdist that comes with `.inp`/`.out` files (strings separated by
//! `\n__ggml_vocab_test__\n`, each tokenized by llama.cpp with `add_special = false` and specials
//! not parsed). Our tokenizer must give the same ids for every string of every vocabulary except
//! the WordPiece (`bert`) ones, which must be refused with an error naming the tokenizer model.
//!
//! The sdist is fetched once with `pip download` by `benches/llama_cpp_src.sh` into
//! `$MOA_LLAMA_CPP_DIR` (default `~/.cache/moa-local/llama.cpp`); `MOA_SKIP_VOCAB_SUITE=1` skips
//! the test where no package index can be reached.

use std::path::PathBuf;
use std::process::Command;

use moa_local::model::gguf::GgufFile;
use moa_local::model::tokenizer::GgufTokenizer;

fn llama_cpp_dir() -> PathBuf {
    let dir = std::env::var_os("MOA_LLAMA_CPP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/moa-local/llama.cpp"));
    if !dir.join("models").is_dir() {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/llama_cpp_src.sh");
        let st = Command::new("bash").arg(script).arg(&dir).status().expect("running benches/llama_cpp_src.sh");
        assert!(st.success(), "could not fetch llama.cpp's source with pip (set MOA_SKIP_VOCAB_SUITE=1 offline)");
    }
    dir
}

#[test]
fn llama_cpp_tokenizer_suite() {
    if std::env::var_os("MOA_SKIP_VOCAB_SUITE").is_some_and(|v| v == "1") {
        println!("skipped (MOA_SKIP_VOCAB_SUITE=1)");
        return;
    }
    let models = llama_cpp_dir().join("models");
    let mut vocabs: Vec<PathBuf> = std::fs::read_dir(&models)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf") && p.with_extension("gguf.inp").exists())
        .collect();
    vocabs.sort();
    assert!(vocabs.len() >= 15, "expected llama.cpp's vocabularies in {}", models.display());
    let (mut passed, mut total, mut failures) = (0, 0, Vec::new());
    for path in &vocabs {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let inp = std::fs::read_to_string(path.with_extension("gguf.inp")).unwrap();
        let out = std::fs::read_to_string(path.with_extension("gguf.out")).unwrap();
        let sep = "\n__ggml_vocab_test__\n";
        let mut texts: Vec<&str> = inp.split(sep).collect();
        if inp.ends_with(sep) {
            texts.pop(); // as llama.cpp's reader: nothing after the last separator
        }
        let expected: Vec<Vec<u32>> =
            out.lines().map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect()).collect();
        assert_eq!(texts.len(), expected.len(), "{name}: .inp and .out differ in number of tests");
        let g = GgufFile::open(path).unwrap();
        let model = g.str("tokenizer.ggml.model").unwrap().to_string();
        let tok = match GgufTokenizer::from_gguf(&g) {
            Ok(t) => t,
            Err(e) if model == "bert" => {
                assert!(e.to_string().contains("bert"), "{name}: the error should name the tokenizer model: {e}");
                println!("{name}: WordPiece, refused as expected: {e}");
                continue;
            }
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let mut ok = 0;
        for (text, want) in texts.iter().zip(&expected) {
            total += 1;
            match tok.encode(text, false) {
                Ok(ids) if &ids == want => ok += 1,
                Ok(ids) => failures.push(format!("{name}: {text:?}: ours {ids:?}, llama.cpp {want:?}")),
                Err(e) => failures.push(format!("{name}: {text:?}: {e}")),
            }
        }
        passed += ok;
        println!("{name} ({model}, pre {:?}): {ok}/{}", tok.pre(), texts.len());
    }
    println!("{passed}/{total} strings tokenized as llama.cpp does");
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
