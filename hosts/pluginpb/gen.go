// Package pluginpb is the generated code of the plugin protocol
// (plugin.proto). Regenerate with `go generate ./hosts/pluginpb` (needs
// protoc 3.21+, protoc-gen-go and protoc-gen-go-grpc on PATH).
package pluginpb

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative plugin.proto
