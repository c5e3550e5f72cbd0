// The commands dragonctl knows and what its help says about them: the
// command table (name, arguments, whether it takes a TASK), the general help
// (`dragonctl help`, --help), each command's help (`dragonctl help COMMAND`)
// and the flag list both end with. Kept apart from dispatch (dragonctl.cc)
// and the commands' work (dragonctl_commands.h): it is most of the text a
// user reads, and changes on its own.
//
// The flag list is built from the ABSL_FLAGs of client/dragonctl.cc (their
// own help text and default), so that --help and absl's --helpfull say the
// same.
#ifndef DRAGON_CLIENT_DRAGONCTL_HELP_H_
#define DRAGON_CLIENT_DRAGONCTL_HELP_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace dragon::client {

// More forms of a command, each its own line in the synopsis.
struct Form {
  const char* args;
  const char* summary;
};

struct Command {
  const char* name;
  const char* args;  // positional arguments, for the synopsis
  const char* summary;
  const char* details;
  bool takes_task;  // exactly one TASK argument
  std::vector<Form> more = {};
};

// Whether `file` (an absl flag's Filename()) is where dragonctl defines its
// flags: those are the ones --help and --helpfull list.
bool IsDragonctlFlagFile(absl::string_view file);

// The command called `name`, or null if there is none.
const Command* FindCommand(const std::string& name);
// Every command's name, in table order: "status, nodes, ..., help".
std::string CommandNames();

// What `dragonctl help` and `dragonctl --help` print.
std::string GeneralHelp();
// What `dragonctl help COMMAND` and `dragonctl COMMAND --help` print.
std::string CommandHelp(const Command& c);

}  // namespace dragon::client

#endif  // DRAGON_CLIENT_DRAGONCTL_HELP_H_
