//! Backup files (`backup::decode`, what `commerce restore` reads) of any bytes: never a
//! panic, every refusal a 400 `INVALID_BACKUP`, and what reads writes back as the same
//! bytes.

#![no_main]

use commerce_core::backup::{self, MAGIC};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|file: &[u8]| {
    match backup::decode(file) {
        Err(refused) => assert_eq!((refused.status(), refused.code()), (400, "INVALID_BACKUP")),
        Ok(entries) => {
            let mut again = MAGIC.to_vec();
            for entry in &entries {
                backup::encode(entry, &mut again);
            }
            assert_eq!(again, file);
        }
    }
});
