// WakeFd: an eventfd on Linux, a non-blocking pipe on other POSIX systems, nothing on Windows
// (open() returns FLUXUS_ENOTSUP there).
#include "platform/wake_fd.hpp"

#include "fluxus.h"

#if defined(__linux__)
#include <sys/eventfd.h>
#include <unistd.h>
#define FLUXUS_HAVE_WAKE_FD 1
#elif defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <unistd.h>
#define FLUXUS_HAVE_WAKE_FD 1
#endif

namespace fluxus {

#if FLUXUS_HAVE_WAKE_FD

WakeFd::~WakeFd() {
    if (read_fd_ >= 0) close(read_fd_);
    if (write_fd_ >= 0 && write_fd_ != read_fd_) close(write_fd_);
}

int32_t WakeFd::open() {
#if defined(__linux__)
    int r = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r < 0) return FLUXUS_ENOMEM;
    read_fd_ = write_fd_ = r;
#else
    int p[2];
    if (pipe(p) != 0) return FLUXUS_ENOMEM;
    for (int d : p) {
        fcntl(d, F_SETFL, fcntl(d, F_GETFL) | O_NONBLOCK);
        fcntl(d, F_SETFD, FD_CLOEXEC);
    }
    read_fd_ = p[0];
    write_fd_ = p[1];
#endif
    return FLUXUS_OK;
}

void WakeFd::post() {
    uint64_t one = 1;  // an eventfd adds it; a pipe takes the 8 bytes
    (void)!write(write_fd_, &one, sizeof one);
}

void WakeFd::drain() {
    uint64_t buf[8];
    while (read(read_fd_, buf, sizeof buf) > 0) {
    }
}

#else

WakeFd::~WakeFd() = default;
int32_t WakeFd::open() { return FLUXUS_ENOTSUP; }
void WakeFd::post() {}
void WakeFd::drain() {}

#endif

}  // namespace fluxus
