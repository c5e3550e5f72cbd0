// Time as components that must be tested without sleeping see it: the
// membership's heartbeat deadlines and grace periods read a Clock, which is
// the system clock in the binaries and a FakeClock that tests move by hand.
#ifndef DRAGON_COMMON_CLOCK_H_
#define DRAGON_COMMON_CLOCK_H_

#include <atomic>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace dragon::common {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
};

class SystemClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
};

// The process's system clock (never destroyed).
inline const Clock* RealClock() {
  static const SystemClock* clock = new SystemClock();
  return clock;
}

// For tests: time moves only when the test says so. Thread-safe.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1'700'000'000))
      : now_ns_(absl::ToUnixNanos(start)) {}
  absl::Time Now() const override { return absl::FromUnixNanos(now_ns_.load()); }
  void Advance(absl::Duration d) { now_ns_ += absl::ToInt64Nanoseconds(d); }

 private:
  std::atomic<int64_t> now_ns_;
};

}  // namespace dragon::common

#endif  // DRAGON_COMMON_CLOCK_H_
