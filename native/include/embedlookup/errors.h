// The engine's public error types. The bindings map each to one Python
// exception (embedlookup.TableFullError, KeyMissingError, TierFullError);
// std::invalid_argument becomes ValueError. Every backend (CPU, CUDA, the
// storage tier) throws these, so callers catch one set of types.
#pragma once
#include <stdexcept>

namespace embedlookup {

// The table (or a capacity / 2^32-row limit) has no room for the new keys;
// raised before any change.
class TableFullError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An update names a key that has no row; raised before any change.
class KeyMissingError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A storage tier has no room for the rows written to it; raised before any row
// is written.
class TierFullError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace embedlookup
