import CloudheedDomain
import Foundation

/// Standard output and error, written straight to the file descriptors: progress redraws and
/// final lines must come out in order, and promptly on a pipe.
enum Console {
    static func out(_ text: String) { write(1, text) }
    static func error(_ text: String) { write(2, text.hasSuffix("\n") ? text : text + "\n") }

    static func write(_ fd: Int32, _ text: String) {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let written = bytes.withUnsafeBytes { Foundation.write(fd, $0.baseAddress, $0.count) }
            if written < 0 && errno == EINTR { continue }
            guard written > 0 else { return }
            bytes = bytes.dropFirst(written)
        }
    }

    /// `--json`: the body exactly as the service sent it, ending in one newline.
    static func json(_ response: APIResponse) {
        guard !response.body.isEmpty else { return }
        let text = String(decoding: response.body, as: UTF8.self)
        out(text.hasSuffix("\n") ? text : text + "\n")
    }

    static var stdoutIsTerminal: Bool { isatty(1) == 1 }

    /// Columns of the terminal on stdout; 80 when it does not say.
    static var width: Int {
        var size = winsize()
        #if os(Linux)
        let status = ioctl(1, UInt(TIOCGWINSZ), &size)
        #else
        let status = ioctl(1, TIOCGWINSZ, &size)
        #endif
        return status == 0 && size.ws_col > 0 ? Int(size.ws_col) : 80
    }
}

/// Human output: aligned tables for lists, `key: value` lines for one object.
enum Format {
    /// Columns padded to their widest cell, two spaces apart; the last column is not padded.
    static func table(_ headers: [String], _ rows: [[String]]) -> String {
        var widths = headers.map(\.count)
        for row in rows {
            for (index, cell) in row.enumerated() where index < widths.count { widths[index] = max(widths[index], cell.count) }
        }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { index, cell in
                index == cells.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }
        return ([line(headers)] + rows.map(line)).joined(separator: "\n") + "\n"
    }

    static func keyValues(_ pairs: [(String, String)]) -> String {
        let width = pairs.map(\.0.count).max() ?? 0
        return pairs.map { key, value in (key + ":").padding(toLength: width + 1, withPad: " ", startingAt: 0) + " " + value }
            .joined(separator: "\n") + "\n"
    }

    /// A field for people: strings as they are, numbers in decimal, null and absent as `-`.
    static func text(_ value: JSONValue?) -> String {
        switch value {
        case nil, .null?: "-"
        case .string(let s)?: s
        case .int(let i)?: String(i)
        case .double(let d)?: String(d)
        case .bool(let b)?: b ? "true" : "false"
        case .array(let items)?: items.map { text($0) }.joined(separator: ", ")
        case .object(let pairs)?: String(decoding: JSONValue.object(pairs).serialized(), as: UTF8.self)
        }
    }

    /// A byte count in binary units, `-` when null.
    static func bytes(_ value: JSONValue?) -> String {
        guard let count = value?.intValue else { return "-" }
        return bytes(count)
    }

    static func bytes(_ count: Int64) -> String {
        let units = ["KiB", "MiB", "GiB", "TiB", "PiB"]
        guard count >= 1024 else { return "\(count) B" }
        var value = Double(count) / 1024
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return String(format: "%.1f", value) + " " + units[unit]
    }

    /// A byte count with its exact value beside it, for `key: value` lines.
    static func exactBytes(_ value: JSONValue?) -> String {
        guard let count = value?.intValue else { return "-" }
        return count < 1024 ? "\(count) B" : "\(bytes(count)) (\(count) bytes)"
    }

    /// `{"code", "message"}` as `message (code)`, `-` when null.
    static func error(_ value: JSONValue?) -> String {
        guard let message = value?["message"]?.stringValue else { return "-" }
        return "\(message) (\(value?["code"]?.stringValue ?? "error"))"
    }

    /// Seconds as `42s`, `3m05s` or `1h02m`.
    static func duration(_ seconds: Double) -> String {
        let total = max(0, Int(seconds.rounded()))
        if total < 60 { return "\(total)s" }
        if total < 3600 { return String(format: "%dm%02ds", total / 60, total % 60) }
        return String(format: "%dh%02dm", total / 3600, (total % 3600) / 60)
    }
}
