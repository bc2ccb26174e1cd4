module scriptgate/conformance

go 1.19
