/* Row ids and their sentinels, shared by every backend: the CPU engine, the
   CUDA table, the HLS kernel (C++) and the OpenCL kernels (which receive the
   values as -D build options from embedlookup/opencl/table.py, read from
   embedlookup._core). Plain C preprocessor values so any of these compilers
   can take the file.

   A row id is an unsigned 32-bit index into a table's row arena. Backends
   that keep row ids in a signed 32-bit int (HLS, OpenCL) see EL_NO_ROW as -1. */
#ifndef EMBEDLOOKUP_ROW_ID_H
#define EMBEDLOOKUP_ROW_ID_H

#define EL_NO_ROW 0xFFFFFFFFu     /* key not found, or an empty index slot */
#define EL_TOMBSTONE 0xFFFFFFFEu  /* an erased index slot (CPU); a claimed slot whose id is not yet written (CUDA) */
#define EL_MAX_ROW_ID 0xFFFFFFFDu /* the largest usable row id: a table holds at most 2^32 - 2 rows */

#ifdef __cplusplus
#include <cstdint>
namespace embedlookup {
constexpr uint32_t kNoRow = EL_NO_ROW;
constexpr uint32_t kTombstone = EL_TOMBSTONE;
constexpr uint32_t kMaxRowId = EL_MAX_ROW_ID;
}  // namespace embedlookup
#endif

#endif /* EMBEDLOOKUP_ROW_ID_H */
