//! `config_file`: the Testflinger-style config file parser,
//! `flinger::config::parse_config_file`, on arbitrary text. Shared by the fuzz target and the
//! stable seed replay.
//!
//! Properties:
//! - the parser never panics; an error names a line that exists;
//! - every accepted file's map, written back as `KEY = 'value'` lines (double quotes when the
//!   value holds a single quote), parses to the same map, also with CRLF line ends, comments and
//!   blank lines around it.

use std::collections::BTreeMap;

use flinger::config::parse_config_file;

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let map = match parse_config_file(text) {
        Ok(map) => map,
        Err(e) => {
            assert!(
                e.line >= 1 && e.line <= text.lines().count(),
                "error on line {} of {}",
                e.line,
                text.lines().count()
            );
            return;
        }
    };
    for (key, value) in &map {
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "key {key:?}"
        );
        assert!(!value.contains('\n'), "a value spans lines");
    }
    let lines = written(&map);
    let plain: String = lines.iter().map(|l| format!("{l}\n")).collect();
    assert_eq!(
        parse_config_file(&plain).as_ref(),
        Ok(&map),
        "written back:\n{plain}"
    );
    let decorated: String = lines
        .iter()
        .map(|l| format!("# a comment\r\n\r\n  {l}  \r\n"))
        .collect();
    assert_eq!(
        parse_config_file(&decorated).as_ref(),
        Ok(&map),
        "written back:\n{decorated}"
    );
}

/// The map as config lines; a value never holds both quote characters, so one of them fits.
fn written(map: &BTreeMap<String, String>) -> Vec<String> {
    map.iter()
        .map(|(key, value)| {
            if value.contains('\'') {
                assert!(!value.contains('"'), "a value holds both quotes: {value:?}");
                format!("{key} = \"{value}\"")
            } else {
                format!("{key} = '{value}'")
            }
        })
        .collect()
}
