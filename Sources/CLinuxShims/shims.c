#define _GNU_SOURCE
#include <unistd.h>
#include "CLinuxShims.h"

/// Flushes every dirty file of the file system holding `fd` with one call.
int cloudheed_syncfs(int fd) { return syncfs(fd); }
