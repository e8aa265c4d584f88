//! Reading Trove's INI guest files (`guest_info.conf`, `trove-guestagent.conf`).
