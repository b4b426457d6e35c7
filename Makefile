# The two set-up commands of the README. Each installs what it needs on a fresh machine first.
.PHONY: run test deps

# System packages the build and the tests need (Debian). Quiet no-op when all are present.
deps:
	@scripts/install-deps

# Run the service on 127.0.0.1:8080 with its data in ./cloudheed-data.
run: deps
	swift run cloudheed serve

# Build and run the whole test suite.
test: deps
	swift build --build-tests
	swift test --skip-build
