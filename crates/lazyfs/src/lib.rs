//! A lazily fetched eStargz layer.
