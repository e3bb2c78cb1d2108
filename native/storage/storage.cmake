# Storage part (issue 4): versions/deltas/checkpoints in the core table, the
# snapshot format, the file tier, and their bindings.
target_sources(embedlookup_core PRIVATE
  native/core/table_storage.cpp
  native/storage/crc32c.cpp
  native/storage/snapshot.cpp
  native/storage/file_tier.cpp)
target_sources(_core PRIVATE native/storage/bind_storage.cpp)
