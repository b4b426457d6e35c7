// Linux calls Swift's Glibc module does not expose (they need _GNU_SOURCE).
#pragma once
int cloudheed_syncfs(int fd);
