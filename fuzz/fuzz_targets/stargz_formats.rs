//! The parsers of the other layer formats: legacy stargz opened unverified
//! (footer variants, chunks without digests), the external-TOC footer and
//! TOC image manifest, an external-TOC blob with a TOC from elsewhere.
//! Each must return a typed error or a result, never panic or blow up.
#![no_main]

use estargz::{external, IndexOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let unverified = IndexOptions {
        unverified_key: Some("sha256:fuzz".into()),
        ..Default::default()
    };
    match mode % 4 {
        0 => {
            // A whole blob, chunks without digests accepted: every chunk
            // decodes or fails cleanly.
            if let Ok(layer) = estargz::open_with(rest, rest.len() as u64, None, &unverified) {
                assert!(layer.index.unverified_chunks() <= layer.index.all_chunks().count());
                let _ = layer.verify_all();
            }
        }
        1 => {
            let _ = external::is_footer(rest);
            let _ = estargz::parse_footer(rest);
            let _ = external::data_end(rest.len() as u64);
        }
        2 => {
            // A TOC image manifest; the layer digest from its first bytes.
            let d = format!("sha256:{}", "a".repeat(64));
            if let Ok(t) = external::find_toc_layer(rest, &d) {
                assert!(t.digest.starts_with("sha256:") && t.digest.len() == 71);
            }
        }
        _ => {
            // An external-TOC blob and a TOC member, split where the first byte says.
            let Some((&cut, rest)) = rest.split_first() else { return };
            let at = (cut as usize * rest.len()) / 256;
            let (member, blob) = rest.split_at(at);
            if let Ok(layer) =
                estargz::open_external(blob, blob.len() as u64, member, None, &unverified)
            {
                let _ = layer.verify_all();
            }
        }
    }
});
