/* Placeholder: the C client library is being written. */
#pragma once
