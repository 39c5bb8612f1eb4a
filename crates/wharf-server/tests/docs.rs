//! The README's error-code table lists every code the server answers with, with its status.

#[test]
fn readme_lists_every_error_code() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    for (code, status, _) in wharf_server::CODES {
        let row = format!("| `{code}` | {status} |");
        assert!(
            readme.contains(&row),
            "README.md lacks the row {row:?} in its error-code table"
        );
    }
}
