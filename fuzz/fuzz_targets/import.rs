//! Any bytes as an Azure export: an import error or YAML that our own parser reads, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_rules::import::{ImportOptions, import_documents};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let docs = vec![("export.json".to_string(), text.to_string())];
    for skip_unsupported in [false, true] {
        if let Ok(imported) = import_documents(&docs, &ImportOptions { skip_unsupported }) {
            // The emitted YAML must be well-formed whatever strings it carries (it may still fail
            // validation: import passes addresses through for `check` to judge).
            if let Err(e) = portcullis_rules::source::parse(Default::default(), &imported.yaml) {
                panic!("import emitted unparsable YAML: {e:?}\n{}", imported.yaml);
            }
        }
    }
});
