// Lets absl-flags programs accept --run-dir as well as --run_dir. absl only
// knows underscores, but dashes are what people type (and what our docs
// show), so argv is rewritten before absl::ParseCommandLine sees it.
#ifndef DRAGON_COMMON_DASHED_FLAGS_H_
#define DRAGON_COMMON_DASHED_FLAGS_H_

#include <string>
#include <vector>

namespace dragon::common {

// Returns argv with '-' turned into '_' inside the names of long flags
// ("--run-dir=x" -> "--run_dir=x"); values, positional arguments and
// everything after "--" are left alone. `storage` owns the strings.
std::vector<char*> UnderscoreFlagNames(int argc, char** argv, std::vector<std::string>* storage);

}  // namespace dragon::common

#endif  // DRAGON_COMMON_DASHED_FLAGS_H_
