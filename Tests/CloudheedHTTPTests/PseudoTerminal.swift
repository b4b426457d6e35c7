import Foundation
import Subprocess
import SystemPackage

/// A pseudo-terminal, so a child process's stdout is a terminal (`isatty(1)`) while the test
/// reads every byte it draws from the master side.
final class PseudoTerminal: @unchecked Sendable {
    let master: Int32
    private(set) var slave: Int32

    init() throws {
        var master: Int32 = -1
        var slave: Int32 = -1
        guard openpty(&master, &slave, nil, nil, nil) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        self.master = master
        self.slave = slave
        // Raw: the line discipline would otherwise turn every "\n" into "\r\n", and a plain line
        // could not be told from a redraw.
        var attributes = termios()
        tcgetattr(slave, &attributes)
        cfmakeraw(&attributes)
        tcsetattr(slave, TCSANOW, &attributes)
        _ = fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK)
    }

    deinit {
        close(master)
        if slave >= 0 { close(slave) }
    }

    /// The slave side, handed to the child as its stdout; the child's copy is the only one left,
    /// so the master reads end of file (EIO) once the child exits.
    func takeSlave() -> FileDescriptor {
        defer { slave = -1 }
        return FileDescriptor(rawValue: slave)
    }

    /// Everything written to the terminal until every writer closed it (or `seconds` passed).
    func readAll(seconds: Double = 300) async -> [UInt8] {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            let count = buffer.withUnsafeMutableBytes { read(master, $0.baseAddress, $0.count) }
            if count > 0 {
                bytes += buffer[..<count]
            } else if count < 0 && (errno == EAGAIN || errno == EINTR) {
                try? await Task.sleep(for: .milliseconds(20))
            } else {
                break
            }
        }
        return bytes
    }
}
