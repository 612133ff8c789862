// Library-wide configuration: the versioned inline namespace and the version numbers.
#pragma once

#define DMOE_VERSION_MAJOR 0
#define DMOE_VERSION_MINOR 1
#define DMOE_VERSION_PATCH 0

// Every declaration lives in dmoe::v0, so two builds with different ABIs fail at link time.
#define DMOE_BEGIN_NAMESPACE \
  namespace dmoe {           \
  inline namespace v0 {
#define DMOE_END_NAMESPACE \
  }                        \
  }
