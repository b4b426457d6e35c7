import Foundation

/// An exclusive lock on a data directory (`<dir>/lock`, flock), held by `cloudheed serve` for its
/// whole life and by `cloudheed keys rotate` while it runs, so the two never overlap and two
/// services never share one directory. The kernel releases it when the process dies.
public final class DataDirectoryLock: Sendable {
    let descriptor: Int32

    public init(directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let fd = open(directory + "/lock", O_RDWR | O_CREAT, 0o600)
        guard fd >= 0 else { throw KeyError("cannot open \(directory)/lock: errno \(errno)") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw KeyError("another cloudheed process (serve, or keys rotate) is using \(directory); stop it first")
        }
        descriptor = fd
    }

    deinit { close(descriptor) }
}
