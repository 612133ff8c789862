// The one Boost.Test entry point shared by every dmoe test executable.
#define BOOST_TEST_MODULE dmoe
#include <boost/test/unit_test.hpp>
