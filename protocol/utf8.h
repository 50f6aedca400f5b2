// Whether bytes are UTF-8 text as Python decodes it (strict: no overlong forms, no
// surrogates, nothing past U+10FFFF). Workers unpack every MessagePack string as a Python
// str, and a string that does not decode stops the worker's message loop: shoald checks
// the strings a client chooses (a call's values and names, a model's name) with this
// before they reach a worker, and the KServe front checks BYTES inputs with it to name
// the input at fault. Replies are read the same way by Python clients: a file name that
// is not UTF-8 is shown escaped (ShowNonUtf8).
// Thread-safety: pure; any thread.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace shoal {

// nullopt when `s` is valid UTF-8; else the offset of the first byte that is not.
std::optional<size_t> FirstNonUtf8(std::string_view s);

// `s` to show (in a reply or a log): as it is where it is UTF-8, each other byte as \xNN.
std::string ShowNonUtf8(std::string_view s);

}  // namespace shoal
